#!/usr/bin/env bash
# A flood of distinct valid tokens (nothing can be served from the verified-token cache, and
# every insert evicts): latency percentiles and peak memory of Portcullis alone, for 1 KiB and
# 11 KiB tokens, with the cache budget small enough that it fills many times over.
#
#   bash bench/token-flood.sh        # TOKENS=60000 DURATION=20 CONNECTIONS=32 CACHE_MIB=8
#
# wrk on CPU 0, Portcullis on CPU 1. Needs: wrk, taskset, python3 with pyjwt[crypto].
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${TOKENS:-60000}
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-32}
CACHE_MIB=${CACHE_MIB:-8}

cargo build --release --locked --quiet
BIN=$PWD/target/release/portcullis
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.2; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Ed25519 tokens (cheap to make), each with a distinct jti, padded to the target size.
python3 - "$WORK" "$TOKENS" <<'PY'
import json, sys, time, jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm
work, n = sys.argv[1], int(sys.argv[2])
key = ed25519.Ed25519PrivateKey.generate()
jwk = json.loads(OKPAlgorithm.to_jwk(key.public_key())); jwk.update(kid="flood", alg="EdDSA", use="sig")
open(f"{work}/jwks.json", "w").write(json.dumps({"keys": [jwk]}))
now = int(time.time())
for size in (1024, 11 * 1024):
    with open(f"{work}/tokens-{size}.txt", "w") as out:
        for i in range(n):
            claims = {"iss": "https://idp.flood", "aud": "api", "sub": f"user-{i}", "jti": str(i), "iat": now, "exp": now + 3600}
            pad = size - len(jwt.encode(dict(claims, pad=""), key, algorithm="EdDSA", headers={"kid": "flood"}))
            claims["pad"] = "x" * max(0, pad * 3 // 4)
            out.write(jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "flood"}) + "\n")
PY
JWKS=$(cat "$WORK/jwks.json")
mkdir -p "$WORK/policies"
cat > "$WORK/policies/flood.yaml" <<YAML
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: { name: api, namespace: flood }
spec:
  issuers: [{ issuer: "https://idp.flood", audiences: [api], algorithms: [EdDSA], jwks: { inline: $JWKS } }]
  rules: [{ name: all, match: { paths: [{ prefix: / }] } }]
  forward: { claimsToHeaders: { X-User-Id: sub } }
YAML

cat > "$WORK/flood.lua" <<'LUA'
local tokens = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  i = math.random(#tokens)
end
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/ext_authz/orders", { ["Host"] = "api.flood", ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA

echo "| tokens | requests/s | p50 | p90 | p99 | max | non-2xx | peak RSS | cache budget |"
echo "|---|---|---|---|---|---|---|---|---|"
for size in 1024 11264; do
  PORT=$(free_port)
  taskset -c 1 "$BIN" local --dir "$WORK/policies" --listen "127.0.0.1:$PORT" --token-cache-mib "$CACHE_MIB" >"$WORK/pc-$size.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
  out=$(taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/flood.lua" "http://127.0.0.1:$PORT" -- "$WORK/tokens-$size.txt")
  rss=$(awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$PID/status")
  cached=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^portcullis_token_cache_bytes/ {printf "%.1f MiB held", $2 / 1048576}')
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p() { awk -v q="$1" '$1 == q {print $2}' <<<"$out"; }
  max=$(awk '/Latency/ && !/Distribution/ {print $4; exit}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  echo "| $((size / 1024)) KiB | $rps | $(p 50%) | $(p 90%) | $(p 99%) | $max | $non2xx | $rss | $CACHE_MIB MiB ($cached) |"
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
