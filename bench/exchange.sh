#!/usr/bin/env bash
# Token exchange (POST /oauth2/token) on one core: requests per second and latency percentiles
# of Portcullis alone, every request a full exchange (both tokens verified, a new token signed).
#
#   bash bench/exchange.sh        # DURATION=20 CONNECTIONS=16
#
# wrk on CPU 0, Portcullis (local mode, standing in for the cluster's issuer) on CPU 1.
# Needs: wrk, taskset, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-16}

cargo build --release --locked --quiet
BIN=$PWD/target/release/portcullis
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.2; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$WORK/policies"
cat > "$WORK/policies/exchange.yaml" <<'YAML'
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: { name: internal, namespace: shop }
spec: { algorithm: EdDSA }
---
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: { name: cluster, namespace: kube-system }
spec: { algorithm: RS256 }
---
apiVersion: portcullis.dev/v1alpha1
kind: TokenExchangePolicy
metadata: { name: orders, namespace: shop }
spec:
  audience: { serviceAccount: orders }
  signingKeyRef: { name: internal }
  claims: [email, scope]
  from: [{ serviceAccount: shop/checkout }]
YAML
PORT=$(free_port)
GW="http://127.0.0.1:$PORT"
taskset -c 1 "$BIN" local --dir "$WORK/policies" --listen "127.0.0.1:$PORT" --issuer-url "$GW" \
  --cluster-issuer-key kube-system/cluster >"$WORK/pc.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -fs "$GW/readyz" >/dev/null && break; sleep 0.1; done
token() { "$BIN" token --dir "$WORK/policies" "$@"; }
SUBJECT=$(token --key shop/internal --iss "$GW" --aud system:serviceaccount:shop:checkout --sub alice --ttl 1h \
  --claims '{"email":"alice@shop.example","scope":"orders:read orders:write"}')
ACTOR=$(token --key kube-system/cluster --service-account shop/checkout --aud "$GW" --ttl 1h)
enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
BODY="grant_type=$(enc urn:ietf:params:oauth:grant-type:token-exchange)&subject_token=$SUBJECT&subject_token_type=$(enc urn:ietf:params:oauth:token-type:jwt)&actor_token=$ACTOR&actor_token_type=$(enc urn:ietf:params:oauth:token-type:jwt)&audience=$(enc system:serviceaccount:shop:orders)"
curl -fs -X POST -H 'Content-Type: application/x-www-form-urlencoded' --data "$BODY" "$GW/oauth2/token" | grep -q access_token \
  || { echo "the exchange does not work:"; curl -s -X POST -H 'Content-Type: application/x-www-form-urlencoded' --data "$BODY" "$GW/oauth2/token"; exit 1; }
printf '%s' "$BODY" > "$WORK/body"
cat > "$WORK/exchange.lua" <<'LUA'
local f = io.open(os.getenv("BODY_FILE")); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA
out=$(BODY_FILE="$WORK/body" taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/exchange.lua" "$GW/oauth2/token")
p() { awk -v q="$1" '$1 == q {print $2}' <<<"$out"; }
non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
issued=$(curl -s "$GW/metrics" | awk '/^portcullis_token_exchanges_total\{result="issued"\}/ {print $2}')
echo "| connections | exchanges/s | p50 | p90 | p99 | non-2xx | issued (metric) |"
echo "|---|---|---|---|---|---|---|"
echo "| $CONNECTIONS | $(awk '/Requests\/sec/ {print $2}' <<<"$out") | $(p 50%) | $(p 90%) | $(p 99%) | $non2xx | $issued |"
