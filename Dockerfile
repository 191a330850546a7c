# syntax=docker/dockerfile:1
# Build: docker build -t portcullis .   (reproducible from Cargo.lock: --locked)
FROM rust:1.95.0-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake perl && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && echo 'fn main() {}' > benches/decide.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src src
COPY benches benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin portcullis \
    && cp target/release/portcullis /portcullis

# A small runtime with glibc and CA certificates, running as an unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /portcullis /usr/local/bin/portcullis
USER 65532:65532
# Freed memory goes back to the system at once, not at the allocator's next busy moment: a
# gateway reloading a 10,000-policy config otherwise holds both copies' pages for a while.
ENV MIMALLOC_PURGE_DELAY=0
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["gateway", "--help"]
