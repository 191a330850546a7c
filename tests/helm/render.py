"""Render the chart offline with the Helm SDK, lint it strictly, and validate every rendered
built-in object against the Kubernetes schemas (strict: unknown fields fail).

    python3 tests/helm/render.py CHART_DIR VALUES_JSON [KUBE_VERSION [NAMESPACE [RELEASE]]]

Prints the rendered objects as one JSON array on stdout; exits 1 with the reasons on stderr when
rendering, linting or validation fails. Custom resources (ServiceMonitor) are not validated: no
schema for them ships with kubernetes-validate.
"""

import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml

chart_dir, values_json = sys.argv[1], sys.argv[2]
kube_version = sys.argv[3] if len(sys.argv) > 3 else "1.33"
namespace = sys.argv[4] if len(sys.argv) > 4 else "portcullis"
release = sys.argv[5] if len(sys.argv) > 5 else "portcullis"
values = json.loads(values_json)

problems = []
report = helm.lint(chart_dir, values, strict=True, namespace=namespace, kube_version=f"v{kube_version}.0")
for m in report.get("messages", []):
    if m.get("severity", 0) >= 2:
        problems.append(f"lint: {m.get('path')}: {m.get('error')}")
problems += [f"lint: {e}" for e in report.get("errors") or []]

try:
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
except helm.HelmError as e:
    print(f"render: {e}", file=sys.stderr)
    sys.exit(1)

objects = []
for path, text in sorted(rendered.items()):
    if path.endswith("NOTES.txt"):
        continue
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        objects.append(doc)
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}: {e.message}")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
json.dump(objects, sys.stdout)
