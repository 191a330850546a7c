#!/usr/bin/env bash
# Throughput and server CPU per request of NGINX auth_request with Portcullis as the authorizer
# (a real RS256 token), against the same NGINX whose authorizer is itself an NGINX `return 200`.
#
#   bash bench/nginx-authz.sh            # DURATION=10 CONNECTIONS=32 by default
#
# wrk runs on CPU 0; NGINX (one worker) and Portcullis share CPU 1, as in docs/architecture.md.
# Needs: nginx, wrk (apt-get install -y nginx wrk), taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}

cargo build --release --locked --quiet
BIN=$PWD/target/release/portcullis
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.2; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }

mkdir -p "$WORK/policies"
cat > "$WORK/policies/bench.yaml" <<'YAML'
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: { name: idp, namespace: bench }
spec: { algorithm: RS256, rotationInterval: 24h, prePublish: 15m, retain: 2h }
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: { name: api, namespace: bench }
spec:
  issuers:
    - { issuer: "https://idp.bench", audiences: [api], algorithms: [RS256], jwks: { signingKeyRef: { name: idp } } }
  rules:
    - name: read
      match: { paths: [{ prefix: /orders }], methods: [GET] }
      require: [{ claim: scope, containsAll: ["orders:read"] }]
  forward:
    claimsToHeaders: { X-User-Id: sub }
YAML
TOKEN=$("$BIN" token --dir "$WORK/policies" --key bench/idp --iss https://idp.bench --aud api --ttl 1h \
  --claims '{"sub":"alice","scope":"orders:read profile"}')

PC_PORT=$(free_port); NGX_PORT=$(free_port); UP_PORT=$(free_port); NGXAUTH_PORT=$(free_port)
taskset -c 1 "$BIN" local --dir "$WORK/policies" --listen "127.0.0.1:$PC_PORT" >"$WORK/portcullis.log" 2>&1 &
PC_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PC_PORT/readyz" >/dev/null && break; sleep 0.1; done

nginx_conf() { # $1 = authorizer location
  cat <<CONF
daemon off; master_process off; worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/b; proxy_temp_path $WORK/p; fastcgi_temp_path $WORK/f; uwsgi_temp_path $WORK/u; scgi_temp_path $WORK/s;
  upstream authz { server $1; keepalive 64; }
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$NGXAUTH_PORT; location / { return 200; } }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      auth_request /_authz;
      auth_request_set \$pc_user \$upstream_http_x_user_id;
      auth_request_set \$pc_authorization \$upstream_http_authorization;
      proxy_set_header X-User-Id \$pc_user;
      proxy_set_header Authorization \$pc_authorization;
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://app;
    }
    location = /_authz {
      internal;
      proxy_pass http://authz/authz;
      proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_set_header X-Forwarded-Method \$request_method;
      proxy_set_header X-Forwarded-Uri \$request_uri;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_http_version 1.1; proxy_set_header Connection "";
    }
  }
}
CONF
}

run() { # $1 = name, $2 = authorizer address, $3.. = extra server pids to account
  local name=$1 authz=$2; shift 2
  nginx_conf "$authz" >"$WORK/nginx.conf"
  taskset -c 1 nginx -p "$WORK" -c "$WORK/nginx.conf" &
  local ngx=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$NGX_PORT/" && break; sleep 0.05; done
  local status; status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$NGX_PORT/orders/1")
  [ "$status" = 200 ] || { echo "$name: expected 200, got $status" >&2; cat "$WORK/error.log" >&2; exit 1; }
  taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$NGX_PORT/orders/1" >/dev/null
  local before; before=$(cpu_ticks "$ngx" "$@")
  local out; out=$(taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$NGX_PORT/orders/1")
  local after; after=$(cpu_ticks "$ngx" "$@")
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local reqs; reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  local hz; hz=$(getconf CLK_TCK)
  local us; us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  printf '%-44s %10s req/s  %6s µs server CPU/request  (%s requests, %s non-2xx)\n' "$name" "$rps" "$us" "$reqs" "$non2xx"
  kill "$ngx"; wait "$ngx" 2>/dev/null || true
  echo "$rps"  >"$WORK/$name.rps"
}

echo "wrk: 1 thread, $CONNECTIONS connections, ${DURATION}s; servers on CPU 1"
run "nginx auth_request -> nginx return 200" "127.0.0.1:$NGXAUTH_PORT"
run "nginx auth_request -> portcullis (RS256)" "127.0.0.1:$PC_PORT" "$PC_PID"
awk -v a="$(cat "$WORK/nginx auth_request -> nginx return 200.rps")" -v b="$(cat "$WORK/nginx auth_request -> portcullis (RS256).rps")" \
  'BEGIN { printf "portcullis reaches %.0f%% of the nginx-only authorizer (target: 95%%)\n", 100 * b / a }'
grep -c '"deny"' "$WORK/portcullis.log" >/dev/null && echo "note: portcullis denied some requests, see its log" || true
