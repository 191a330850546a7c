#!/usr/bin/env bash
# `portcullis compile --dir` on 10,000 routes in 100 YAML files (100 rules each: prefix, exact
# and template paths, two requirements), the time of local mode's start and of every reload.
#
#   bash bench/compile-yaml.sh        # RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
cargo build --release --locked --quiet
BIN=$PWD/target/release/portcullis
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK/policies" <<'PY'
import os, sys
d = sys.argv[1]; os.makedirs(d)
for f in range(100):
    out = [f"apiVersion: portcullis.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{ name: svc-{f}, namespace: bench }}\nspec:\n"
           f"  hosts: [svc-{f}.example.com]\n  issuers:\n    - issuer: https://idp.example.com\n      audiences: [api]\n"
           f"      algorithms: [RS256]\n      jwks: {{ uri: https://idp.example.com/jwks }}\n  rules:\n"]
    for r in range(100):
        kind = ("prefix", "exact", "template")[r % 3]
        path = f"/api/v{r}/{{id}}/items" if kind == "template" else f"/api/v{r}/items"
        out.append(f"    - name: r{r}\n      match:\n        paths: [{{ {kind}: \"{path}\" }}]\n        methods: [GET, POST]\n"
                   f"      require:\n        - {{ claim: scope, containsAll: [\"s{r}:read\"] }}\n"
                   f"        - {{ claim: realm_access.roles, containsAny: [admin, clerk] }}\n")
    open(f"{d}/p{f}.yaml", "w").write("".join(out))
PY
for _ in $(seq "$RUNS"); do
  /usr/bin/time -f "%e s wall, %M KiB peak" "$BIN" compile --dir "$WORK/policies" --out "$WORK/config.json" 2>&1 >/dev/null | tail -1
done
