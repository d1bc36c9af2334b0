#!/usr/bin/env bash
# Validate every Kubernetes manifest under deploy/, offline:
#
#  1. built-in kinds (everything but shoal.io resources): strict validation
#     (unknown fields are errors) against the Kubernetes $K8S_VERSION schemas
#     that the PyPI package kubernetes-validate ships; a built-in kind it has
#     no schema for (a misspelt apiVersion or kind) is an error too;
#  2. shoal.io custom resources (the Dataset and DataLoad examples): against the
#     openAPIV3Schema of their CRD in base/crds/, with unknown fields rejected
#     as the API server's strict field validation would;
#  3. base/kustomization.yaml: every listed resource exists, and every manifest
#     in base/ is listed;
#  4. if kubectl is installed: base/ renders with kustomize, and the rendered
#     stream passes check 1.
#
# Usage: deploy/validate.sh   (exit status 0 when everything passes)
# Env:   K8S_VERSION (default 1.33.0), PYTHON (default python3)
set -euo pipefail
cd "$(dirname "$0")"

K8S_VERSION="${K8S_VERSION:-1.33.0}"
PY="${PYTHON:-python3}"
# Installed when missing; any installed version that has the schemas of
# $K8S_VERSION is used as it is.
KV_PIN="1.37.0"

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# --- kubernetes-validate -----------------------------------------------------
if ! "$PY" -c 'import kubernetes_validate' 2>/dev/null; then
  echo "installing kubernetes-validate==$KV_PIN"
  "$PY" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KV_PIN"
fi
kv() { "$PY" -m kubernetes_validate "$@"; }
echo "kubernetes-validate $(kv --version), Kubernetes $K8S_VERSION schemas, --strict"
if ! "$PY" - "$K8S_VERSION" <<'PY'; then
import sys
import kubernetes_validate.utils as u
want = u.major_minor(sys.argv[1])
have = [u.major_minor(v) for v in u.all_versions()]
if want not in have:
    sys.exit(f"kubernetes-validate has no schemas for Kubernetes {want} (it has {have[0]} to {have[-1]}): "
             f"upgrade it with: {sys.executable} -m pip install -U kubernetes-validate")
PY
  exit 1
fi

# --- the manifests -------------------------------------------------------------
manifests=()
while IFS= read -r f; do
  manifests+=("${f#./}")
done < <(find . -type f \( -name '*.yaml' -o -name '*.yml' \) \
  ! -name kustomization.yaml ! -name kustomization.yml | sort)
echo "${#manifests[@]} manifest files"

# Runs kubernetes-validate on one file (or - for stdin) and judges its output:
# ERROR and FATAL lines fail; "no schema" warnings fail unless the resource is a
# shoal.io custom resource (check 2 handles those).
check_builtin() {
  local file="$1" out rc=0 line
  out="$(kv -k "$K8S_VERSION" --strict "$file" 2>&1)" || rc=$?
  if [ -z "$out" ]; then
    fail "$file: no Kubernetes resources in it"
    return
  fi
  while IFS= read -r line; do
    case "$line" in
      INFO*) echo "  ok   ${line#INFO }" ;;
      WARN*"with api version shoal.io/"*) echo "  CR   ${line#WARN } (checked against its CRD below)" ;;
      WARN*) fail "${line#WARN } (unknown kind or apiVersion?)" ;;
      *) fail "$line" ;;
    esac
  done <<<"$out"
  if [ "$rc" -ne 0 ] && ! grep -qE '^(ERROR|FATAL)' <<<"$out"; then
    fail "$file: kubernetes-validate exited with $rc"
  fi
}

echo
echo "== 1. built-in kinds: strict, Kubernetes $K8S_VERSION"
for f in "${manifests[@]}"; do
  check_builtin "$f"
done

echo
echo "== 2. shoal.io custom resources: against their CRDs in base/crds/"
# (The Python checks below exit with the number of problems they printed.)
rc=0
"$PY" - "${manifests[@]}" <<'PY' || rc=$?
import glob
import re
import sys

import jsonschema
import yaml

files = sys.argv[1:]
failed = 0


def fail(msg):
    global failed
    failed += 1
    print(f"FAIL: {msg}")


def strict(schema):
    """The schema as the API server applies it with strict field validation:
    unknown fields are errors (instead of being pruned), and OpenAPI's
    `nullable` admits null."""
    if not isinstance(schema, dict):
        return schema
    s = dict(schema)
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(s.get(key), dict):
            s[key] = {k: strict(v) for k, v in s[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = strict(s[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(s.get(key), list):
            s[key] = [strict(x) for x in s[key]]
    if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    if s.get("nullable") is True and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    return s


# The CRDs: (group, kind) -> (file, CRD).
crds = {}
for path in sorted(glob.glob("base/crds/*.yaml")):
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
    except yaml.YAMLError as e:
        fail(f"{path}: not YAML: {e}")
        continue
    for d in docs:
        if d.get("kind") == "CustomResourceDefinition":
            spec = d.get("spec", {})
            crds[(spec.get("group"), spec.get("names", {}).get("kind"))] = (path, d)

checked = 0
for path in files:
    if path.startswith("base/crds/"):
        continue
    for doc in yaml.safe_load_all(open(path)):
        if not doc or "/" not in str(doc.get("apiVersion", "")):
            continue
        group, version = doc["apiVersion"].split("/", 1)
        if not (group == "shoal.io" or group.endswith(".shoal.io")):
            continue
        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        what = f"{path}: {kind} {meta.get('namespace', '')}/{meta.get('name', '?')}"
        if (group, kind) not in crds:
            guess = f"base/crds/{group}_{str(kind).lower()}s.yaml"
            fail(f"{what}: no CRD for {group}/{version} {kind} in base/crds/ (expected {guess}, "
                 f"which does not exist yet or does not define it). Generate the CRDs with: "
                 f"shoal operator crds --dir deploy/base/crds")
            continue
        crd_path, crd = crds[(group, kind)]
        versions = {v.get("name"): v for v in crd["spec"].get("versions", [])}
        if version not in versions or not versions[version].get("served", False):
            fail(f"{what}: {crd_path} does not serve version {version} (it has {sorted(versions)})")
            continue
        schema = (versions[version].get("schema") or {}).get("openAPIV3Schema")
        if not schema:
            fail(f"{what}: {crd_path} has no openAPIV3Schema for {version}")
            continue
        name = str(meta.get("name", ""))
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name) or len(name) > 253:
            fail(f"{what}: metadata.name {name!r} is not a DNS subdomain name")
        if crd["spec"].get("scope") == "Namespaced" and not meta.get("namespace"):
            fail(f"{what}: {kind} is namespaced: set metadata.namespace")
        # apiVersion, kind and metadata are always allowed at the root (CRD
        # schemas need not declare them).
        root = dict(schema)
        root["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                              "metadata": {"type": "object"}, **root.get("properties", {})}
        validator = jsonschema.Draft4Validator(strict(root))
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        for e in errors:
            where = ".".join(str(p) for p in e.absolute_path) or "(root)"
            fail(f"{what}: {where}: {e.message}")
        checked += 1
        if not errors:
            print(f"  ok   {what} against {crd_path} ({version})")

print(f"  {checked} custom resources checked")
sys.exit(min(failed, 100))
PY
failures=$((failures + rc))

echo
echo "== 3. base/kustomization.yaml"
krc=0
"$PY" - <<'PY' || krc=$?
import glob
import os
import sys

import yaml

k = yaml.safe_load(open("base/kustomization.yaml")) or {}
resources = k.get("resources") or []
failed = 0
for r in resources:
    if "://" in r or r.startswith("github.com/"):
        print(f"  skip {r} (remote)")
        continue
    p = os.path.normpath(os.path.join("base", r))
    if os.path.exists(p):
        print(f"  ok   {r}")
    else:
        failed += 1
        hint = " (generate the CRDs with: shoal operator crds --dir deploy/base/crds)" if r.startswith("crds/") else ""
        print(f"FAIL: base/kustomization.yaml lists {r}, which does not exist{hint}")
listed = {os.path.normpath(os.path.join("base", r)) for r in resources}
for f in sorted(glob.glob("base/**/*.y*ml", recursive=True)):
    if os.path.basename(f) in ("kustomization.yaml", "kustomization.yml"):
        continue
    f = os.path.normpath(f)
    if f not in listed and not any(f.startswith(d + os.sep) for d in listed if os.path.isdir(d)):
        failed += 1
        print(f"FAIL: {f} is not listed in base/kustomization.yaml resources")
sys.exit(min(failed, 100))
PY
failures=$((failures + krc))

echo
echo "== 4. kustomize build base/"
if ! command -v kubectl >/dev/null; then
  echo "  skip: kubectl is not installed"
elif [ "$krc" -ne 0 ]; then
  echo "  skip: base/kustomization.yaml has problems (above)"
else
  rendered="$(mktemp)"
  trap 'rm -f "$rendered"' EXIT
  if kubectl kustomize base >"$rendered"; then
    echo "  rendered $(grep -c '^kind:' "$rendered") resources"
    check_builtin - <"$rendered"
  else
    fail "kubectl kustomize base failed"
  fi
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "validate.sh: $failures problem(s)"
  exit 1
fi
echo "validate.sh: all manifests valid"
