// Envoy's gRPC Check allocates per header and per field (h2, protobuf); glibc malloc was an eighth
// of the authorizer's CPU there (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
