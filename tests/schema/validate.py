"""Validate custom resources against a CRD's openAPIV3Schema, as the API server's structural
validation does (types, required, enums, patterns, lengths, bounds). CEL rules are checked in
Rust with kube-cel; unknown fields with the CRD's own structure.

    python3 tests/schema/validate.py CRD_YAML [KIND VERSION] < documents.json

KIND and VERSION pick one CRD of a multi-document file and one of its versions (default: the
first CRD, its first version).

Reads a JSON array of documents; prints a JSON array with, per document, the list of errors.
"""

import json
import sys

import jsonschema
import yaml


def openapi_to_jsonschema(node):
    """OpenAPI's `nullable: true` becomes a null type; everything else carries over."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


with open(sys.argv[1]) as f:
    crds = [d for d in yaml.safe_load_all(f) if d]
if len(sys.argv) > 3:
    crd = next(d for d in crds if d["spec"]["names"]["kind"] == sys.argv[2])
    version = next(v for v in crd["spec"]["versions"] if v["name"] == sys.argv[3])
else:
    crd = crds[0]
    version = crd["spec"]["versions"][0]
schema = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
validator = jsonschema.Draft7Validator(schema)
documents = json.load(sys.stdin)
result = []
for doc in documents:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    result.append([f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors])
json.dump(result, sys.stdout)
