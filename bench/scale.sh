#!/usr/bin/env bash
# Thousands of AuthPolicies on a real API server, one command:
#
#   bash bench/scale.sh      # NAMESPACES=100 POLICIES=10000 KEYS=10 EDITS=50
#
# Starts (or reuses) the API server of ../shared/k8s (or the cluster of PORTCULLIS_E2E_KUBECONFIG),
# runs the release controller and one gateway replica as processes against it, creates the
# namespaces, SigningKeys and policies (examples/scale.rs: 4 routes each, 32 writes at once), and
# reports: how long after the last create every policy is Programmed; one edit → Programmed
# (p50/p99 over EDITS edits, one at a time); the controller's and the gateway's peak and final
# RSS; the gateway ConfigMap's size. Deletes its namespaces at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
NAMESPACES=${NAMESPACES:-100}
POLICIES=${POLICIES:-10000}
KEYS=${KEYS:-10}
EDITS=${EDITS:-50}
K8S=${PORTCULLIS_K8S_TOOLKIT:-../shared/k8s}
cargo build --release --locked --quiet --bin portcullis --example scale
BIN=$PWD/target/release/portcullis
DRIVER=$PWD/target/release/examples/scale
KUBECONFIG=${PORTCULLIS_E2E_KUBECONFIG:-$(bash "$K8S/up.sh" | tail -1)}
export KUBECONFIG
NS=portcullis-scale
WORK=$(mktemp -d)
# As the chart and the image run them: freed memory goes back to the system at once.
export MIMALLOC_PURGE_DELAY=0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk -v k="$2" '$1 == k":" {printf "%.0f MiB", $2 / 1024}' "/proc/$1/status"; }
finish() {
  kill $(jobs -p) 2>/dev/null || true
  "$DRIVER" cleanup >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap finish EXIT

"$DRIVER" crds "$NS"
"$DRIVER" cleanup
JWKS_PORT=$(free_port)
"$DRIVER" jwks "$JWKS_PORT" &
ADMIN=$(free_port)
GW=$(free_port)
SETTINGS=$(python3 -c "import json,sys; print(json.dumps({'default': {'mintingKeys': ['scale-%03d/internal' % n for n in range(int(sys.argv[1]))]}}))" "$KEYS")
RUST_LOG=warn,portcullis=info "$BIN" controller --namespace "$NS" --gateways default --admin-listen "127.0.0.1:$ADMIN" --no-leader-election \
  --gateway-settings "$SETTINGS" >"$WORK/controller.log" 2>&1 &
CONTROLLER=$!
RUST_LOG=warn "$BIN" gateway --configmap "$NS/portcullis-gateway-default" --listen "127.0.0.1:$GW" --replica-name scale-gw \
  >"$WORK/gateway.log" 2>&1 &
GATEWAY=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && curl -sf "http://127.0.0.1:$GW/readyz" >/dev/null && break; sleep 0.2; done

echo "== $POLICIES policies in $NAMESPACES namespaces, $KEYS SigningKeys"
echo "setup started $(date +%T)"; "$DRIVER" setup "$NAMESPACES" "$POLICIES" "$KEYS" "http://127.0.0.1:$JWKS_PORT/jwks"
"$DRIVER" programmed "$POLICIES"
echo "controller RSS after the apply: $(rss $CONTROLLER VmRSS) (peak $(rss $CONTROLLER VmHWM))"
"$DRIVER" edits "$EDITS"
"$DRIVER" size "$NS"
sleep 3
echo "controller RSS: $(rss $CONTROLLER VmRSS) now, $(rss $CONTROLLER VmHWM) peak"
echo "gateway RSS:    $(rss $GATEWAY VmRSS) now, $(rss $GATEWAY VmHWM) peak"
# A restart over the same 10,000 policies: the memory of its state alone, without the bulk's churn.
kill $CONTROLLER; wait $CONTROLLER 2>/dev/null || true
RUST_LOG=warn,portcullis=info "$BIN" controller --namespace "$NS" --gateways default --admin-listen "127.0.0.1:$ADMIN" --no-leader-election \
  --gateway-settings "$SETTINGS" >>"$WORK/controller.log" 2>&1 &
CONTROLLER=$!
started=$(date +%s.%N)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
sleep 15
echo "controller restarted: ready after $(python3 -c "import time; print('%.1f s' % (time.time() - $started - 15))"), RSS 15 s later $(rss $CONTROLLER VmRSS) (peak $(rss $CONTROLLER VmHWM)), $(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^portcullis_controller_writes_total/ {n += $2} END {print n + 0}') writes"
echo "controller log: $(grep -cE " (WARN|ERROR) " "$WORK/controller.log" || true) warnings or errors, $(grep -c "gateway config published" "$WORK/controller.log" || true) configs published"
grep -E " (WARN|ERROR) " "$WORK/controller.log" | cut -c28- | sort | uniq -c | sort -rn | head -5 || true
if [ -n "${KEEP_LOGS:-}" ]; then cp "$WORK"/*.log "$KEEP_LOGS"/; fi
