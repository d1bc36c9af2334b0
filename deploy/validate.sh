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
#  3. kube-scheduler configurations (deploy/scheduler/), which are not API
#     objects and have no schema: a KubeSchedulerConfiguration file, or one
#     embedded in a ConfigMap, is checked as kube-scheduler would load it
#     (apiVersion and kind exact, unknown fields rejected) plus shoal's rules
#     for extenders (HTTPS with a CA, filter and prioritize verbs, weight
#     1..10, nodeCacheCapable false, ignorable); admission webhooks' caBundle
#     must be base64; the Services that the extender and the webhook call
#     must exist with that port;
#  4. base/kustomization.yaml: every listed resource exists, and every manifest
#     in base/ is listed;
#  5. overlays (overlays/*/, any kustomization with patches): their patch files
#     are partial objects, so checks 1-3 skip them; instead each patch must
#     target an object of the resources it patches (kind, name, namespace and
#     apiVersion as kustomize matches them), name only containers that exist
#     there and mount only volumes that exist; a strategic-merge patch of a
#     built-in kind must pass check 1's schema with every field optional (no
#     unknown fields); every YAML file of an overlay must be used by it. Needs
#     no kubectl;
#  6. if kubectl is installed: base/, scheduler/ and each overlay render with
#     kustomize, the rendered streams pass check 1, scheduler/'s passes check 3
#     with its generated ConfigMap mounted where kube-scheduler's --config
#     points, and in base/'s and the overlays' the files named by SHOAL_TOKEN(S)_FILE
#     and SHOAL_TLS_* are mounted from Secrets, every shoal component agrees on
#     token and TLS (base/ has both: secure by default), each holds its own
#     role's credential, only servers hold the credentials table, and the
#     probes of a TLS gRPC port are tcpSocket.
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

# Check 5, as a program: mode "list" prints the patch files of every
# kustomization here, mode "check" checks them; it exits with the number of
# problems.
IFS= read -r -d '' OVERLAY_CHECK <<'PY' || true
import glob
import os
import re
import sys

import yaml

# Overlays: the patches of every kustomization under deploy/. Mode "list"
# prints the patch files (check 1 leaves them out: they are partial objects);
# mode "check" (with K8S_VERSION) checks that each patch targets an object of
# the resources it patches (for a workload: containers that exist there, mounts
# of volumes that exist), that a strategic-merge patch of a built-in kind has
# no field its schema lacks (every field optional: it is a partial object), and
# that every YAML file in an overlay's directory is used by it.
mode = sys.argv[1]
K8S_VERSION = sys.argv[2] if len(sys.argv) > 2 else None
failed = 0


def fail(msg):
    global failed
    failed += 1
    # (In mode list, stdout is the list of patch files.)
    print(f"FAIL: {msg}", file=sys.stderr if mode == "list" else sys.stdout)


# Kinds that kustomize's namespace: does not touch.
CLUSTER_SCOPED = {
    "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "CSIDriver",
    "StorageClass", "PersistentVolume", "PriorityClass", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "APIService", "Node", "RuntimeClass", "IngressClass",
}
# Where each workload kind keeps its pod spec.
POD_SPEC = {
    "Deployment": ("spec", "template", "spec"), "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"), "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"), "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


def kustomization_file(d):
    for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if os.path.isfile(os.path.join(d, n)):
            return os.path.join(d, n)
    return None


def load_kustomization(d):
    path = kustomization_file(d)
    try:
        return path, (yaml.safe_load(open(path)) or {})
    except yaml.YAMLError as e:
        fail(f"{path}: not YAML: {e}")
        return path, {}


def load_docs(path):
    try:
        return [x for x in yaml.safe_load_all(open(path)) if x is not None]
    except yaml.YAMLError as e:
        fail(f"{path}: not YAML: {e}")
        return []


def remote(r):
    return "://" in r or r.startswith(("github.com/", "git@"))


def patch_entries(k):
    """(entry, file or None, inline text or None, json6902) for every patch of a kustomization."""
    out = []
    for e in k.get("patches") or []:
        if isinstance(e, dict):
            out.append((e, e.get("path"), e.get("patch"), None))
    for e in k.get("patchesStrategicMerge") or []:
        if isinstance(e, str):
            if "\n" in e:
                out.append(({}, None, e, False))
            else:
                out.append(({}, e, None, False))
    for e in k.get("patchesJson6902") or []:
        if isinstance(e, dict):
            out.append((e, e.get("path"), e.get("patch"), True))
    return out


def objects(d, stack=()):
    """The objects a kustomization directory produces, roughly: its resources
    (recursively), their namespace set by namespace:, plus the names of its
    generated ConfigMaps and Secrets. Patches do not create objects and are
    not applied."""
    if d in stack:
        fail(f"{d}: kustomization cycle through {' -> '.join(stack)}")
        return []
    path, k = load_kustomization(d)
    out = []
    for r in (k.get("resources") or []) + (k.get("bases") or []):
        if not isinstance(r, str) or remote(r):
            continue
        p = os.path.normpath(os.path.join(d, r))
        if os.path.isdir(p) and kustomization_file(p):
            out += objects(p, stack + (d,))
        elif os.path.isfile(p):
            out += [x for x in load_docs(p) if isinstance(x, dict)]
        else:
            fail(f"{path}: resource {r} does not exist")
    for gen, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for g in k.get(gen) or []:
            out.append({"apiVersion": "v1", "kind": kind,
                        "metadata": {"name": g.get("name"), "namespace": g.get("namespace")}})
    ns = k.get("namespace")
    if ns:
        out = [dict(o, metadata=dict(o.get("metadata") or {}, namespace=ns))
               if o.get("kind") not in CLUSTER_SCOPED else o for o in out]
    return out


def ident(o):
    m = o.get("metadata") or {}
    ns = m.get("namespace")
    return f"{o.get('kind')} {ns + '/' if ns else ''}{m.get('name')}"


def group_version(api):
    g, _, v = str(api or "").rpartition("/")
    return g, v


def select(objs, target, where):
    """The objects a patch entry's target: selects (kind, name and namespace as
    regular expressions, as kustomize reads them)."""
    if target.get("labelSelector") or target.get("annotationSelector"):
        sel = target.get("labelSelector") or ""
        pairs = [p.split("=", 1) for p in str(sel).split(",") if p]
        if target.get("annotationSelector") or not all(len(p) == 2 and not p[0].endswith("!") for p in pairs):
            print(f"  skip {where}: selector {target} not checked here (rendered by check 6)")
            return None
    else:
        pairs = []

    def ok(o):
        m = o.get("metadata") or {}
        g, v = group_version(o.get("apiVersion"))
        for key, have in (("kind", o.get("kind")), ("name", m.get("name")), ("namespace", m.get("namespace"))):
            if target.get(key) and not re.fullmatch(str(target[key]), str(have or "")):
                return False
        if target.get("group") is not None and target.get("group") != g:
            return False
        if target.get("version") and target.get("version") != v:
            return False
        labels = m.get("labels") or {}
        return all(labels.get(a) == b for a, b in pairs)

    return [o for o in objs if ok(o)]


def dig(o, keys):
    for key in keys:
        o = (o or {}).get(key) if isinstance(o, dict) else None
    return o or {}


def check_workload(patch, base, where):
    """Containers a strategic-merge patch names must exist in the workload (or
    be complete, with an image: a new container); the volumes it mounts must
    exist in the patch or the workload."""
    keys = POD_SPEC.get(base.get("kind"))
    if not keys:
        return
    pspec, bspec = dig(patch, keys), dig(base, keys)
    volumes = {v.get("name") for v in (pspec.get("volumes") or []) + (bspec.get("volumes") or [])}
    for field in ("initContainers", "containers"):
        have = {c.get("name") for c in bspec.get(field) or []}
        for c in pspec.get(field) or []:
            if not isinstance(c, dict):
                continue
            if c.get("name") not in have and c.get("$patch") != "delete":
                if c.get("image"):
                    print(f"  ok   {where}: adds the container {c.get('name')}")
                else:
                    fail(f"{where}: {field}: {c.get('name')!r} is not a container of {ident(base)} "
                         f"(it has {sorted(have)}); the patch would add a container without an image")
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    fail(f"{where}: container {c.get('name')} mounts the volume {m.get('name')!r}, "
                         f"which neither the patch nor {ident(base)} defines")


def pointer(o, path, parent_only):
    """Whether the JSON pointer `path` (or, for add, its parent) exists in o."""
    if path == "":
        return True
    if not str(path).startswith("/"):
        return False
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in str(path)[1:].split("/")]
    if parent_only:
        tokens, last = tokens[:-1], tokens[-1]
    for t in tokens:
        if isinstance(o, dict) and t in o:
            o = o[t]
        elif isinstance(o, list) and t.isdigit() and int(t) < len(o):
            o = o[int(t)]
        else:
            return False
    if parent_only:
        return isinstance(o, dict) or (isinstance(o, list) and (last == "-" or (last.isdigit() and int(last) <= len(o))))
    return True


def optional(schema):
    """A JSON schema with no required fields, at any depth."""
    if isinstance(schema, dict):
        return {k: optional(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [optional(x) for x in schema]
    return schema


def without_directives(o):
    """A strategic-merge patch without its directives ($patch, $retainKeys,
    $setElementOrder/..., $deleteFromPrimitiveList/...) and deletions (null)."""
    if isinstance(o, dict):
        # (null deletes a field.)
        return {k: without_directives(v) for k, v in o.items() if not str(k).startswith("$") and v is not None}
    if isinstance(o, list):
        return [without_directives(x) for x in o if not (isinstance(x, dict) and x.get("$patch") == "delete")]
    return o


_schemas = {}


def field_errors(doc):
    """Fields of a patch that its kind's strict schema (kubernetes-validate's,
    for K8S_VERSION) does not know; None when the kind has no schema there."""
    import jsonschema
    import kubernetes_validate.utils as u
    from referencing import Registry, Resource

    version = [v for v in u.all_versions() if u.major_minor(v) <= u.major_minor(K8S_VERSION)][-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(doc.get("apiVersion")))
    name = f"{str(doc.get('kind')).lower()}-{api}"
    if name not in _schemas:
        d = f"kubernetes-json-schema/v{version}-local-strict"
        try:
            schema = optional(u.schema_contents(f"{d}/{name}.json", K8S_VERSION))
        except FileNotFoundError:
            _schemas[name] = None
        else:
            defs = optional(u.schema_contents(f"{d}/_definitions.json", K8S_VERSION))
            registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
            _schemas[name] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    v = _schemas[name]
    if v is None:
        return None
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(v.iter_errors(without_directives(doc)), key=lambda e: list(map(str, e.absolute_path)))]


def check_json6902(ops, base, where):
    if not isinstance(ops, list):
        fail(f"{where}: a JSON patch must be a list of operations")
        return
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "move", "copy", "test"):
            fail(f"{where}: operation {i}: op must be add, remove, replace, move, copy or test, not {op!r}")
            continue
        if not pointer(base, op.get("path", ""), op["op"] in ("add", "move", "copy")):
            fail(f"{where}: operation {i} ({op['op']} {op.get('path')}): no such path in {ident(base)} "
                 f"(as in the resources, before the other patches)")
        if op["op"] in ("move", "copy") and not pointer(base, op.get("from", ""), False):
            fail(f"{where}: operation {i} ({op['op']} from {op.get('from')}): no such path in {ident(base)}")


kdirs = sorted({os.path.dirname(p) or "." for pat in ("**/kustomization.yaml", "**/kustomization.yml", "**/Kustomization")
                for p in glob.glob(pat, recursive=True)})
if mode == "list":
    for d in kdirs:
        _, k = load_kustomization(d)
        for _, f, _, _ in patch_entries(k):
            if f and not remote(f):
                print(os.path.normpath(os.path.join(d, f)))
    sys.exit(0)

checked = 0
for d in kdirs:
    kpath, k = load_kustomization(d)
    entries = patch_entries(k)
    if not entries:
        continue
    print(f"  -- {d}/")
    objs = objects(d)
    print(f"  its resources make {len(objs)} objects")
    used = set()
    for r in (k.get("resources") or []) + (k.get("bases") or []) + (k.get("components") or []):
        if isinstance(r, str) and not remote(r):
            used.add(os.path.normpath(os.path.join(d, r)))
    for gen in ("configMapGenerator", "secretGenerator"):
        for g in k.get(gen) or []:
            for f in (g.get("files") or []) + (g.get("envs") or []) + ([g["env"]] if g.get("env") else []):
                used.add(os.path.normpath(os.path.join(d, str(f).split("=", 1)[-1])))
    for entry, f, inline, json6902 in entries:
        if f:
            p = os.path.normpath(os.path.join(d, f))
            used.add(p)
            if not os.path.isfile(p):
                fail(f"{kpath}: patch {f} does not exist")
                continue
            where, docs = p, load_docs(p)
        else:
            where = f"{kpath}: inline patch"
            try:
                docs = [x for x in yaml.safe_load_all(inline or "") if x is not None]
            except yaml.YAMLError as e:
                fail(f"{where}: not YAML: {e}")
                continue
        target = entry.get("target")
        # kustomize reads a patch that is a list as a JSON patch (RFC 6902).
        if json6902 or (json6902 is None and len(docs) == 1 and isinstance(docs[0], list)):
            if not isinstance(target, dict):
                fail(f"{where}: a JSON patch needs a target: in {kpath}")
                continue
            found = select(objs, target, where)
            if found is None:
                continue
            if not found:
                fail(f"{where}: its target {target} matches no object of {d}/'s resources")
            for o in found:
                before = failed
                check_json6902(docs[0] if docs else None, o, where)
                if failed == before:
                    print(f"  ok   {where}: JSON patch of {ident(o)}")
            checked += 1
            continue
        for doc in docs:
            if not isinstance(doc, dict):
                fail(f"{where}: a strategic-merge patch must be an object")
                continue
            if isinstance(target, dict):
                found = select(objs, target, where)
                if found is None:
                    continue
                what = f"its target {target}"
            else:
                m = doc.get("metadata") or {}
                if not (doc.get("apiVersion") and doc.get("kind") and m.get("name")):
                    fail(f"{where}: a strategic-merge patch without target: needs apiVersion, kind "
                         f"and metadata.name")
                    continue
                found = [o for o in objs if o.get("apiVersion") == doc["apiVersion"] and o.get("kind") == doc["kind"]
                         and (o.get("metadata") or {}).get("name") == m["name"]
                         # kustomize matches the namespace exactly: a patch without
                         # one does not match an object in a namespace.
                         and ((o.get("metadata") or {}).get("namespace") or None) == (m.get("namespace") or None)]
                what = f"{doc['apiVersion']} {ident(doc)}"
            if not found:
                fail(f"{where}: {what} is not an object of {d}/'s resources (misspelt name or kind? "
                     f"wrong apiVersion or namespace?)")
                continue
            before = failed
            errors = field_errors(doc)
            for e in errors or []:
                fail(f"{where}: {ident(doc)}: {e}")
            for o in found:
                check_workload(doc, o, where)
                if failed == before:
                    note = "" if errors is not None else f" (no schema for {doc.get('kind')}: fields not checked)"
                    print(f"  ok   {where}: patches {ident(o)}{note}")
            checked += 1
    # A YAML file here that the kustomization does not use is a forgotten patch
    # (or resource); nested kustomizations are checked on their own.
    for f in sorted(glob.glob(os.path.join(d, "**", "*.y*ml"), recursive=True)):
        f = os.path.normpath(f)
        if os.path.basename(f) in ("kustomization.yaml", "kustomization.yml"):
            continue
        rel = os.path.relpath(os.path.dirname(f), d)
        parts = [] if rel == "." else rel.split(os.sep)
        if any(kustomization_file(os.path.join(d, *parts[:i + 1])) for i in range(len(parts))):
            continue
        if f not in used and not any(f.startswith(u + os.sep) for u in used if os.path.isdir(u)):
            fail(f"{f} is neither a resource nor a patch of {kpath}")

print(f"  {checked} patches checked")
sys.exit(min(failed, 100))
PY

# --- the manifests -------------------------------------------------------------
# Every YAML file but kustomizations and the patches they name (check 5).
mapfile -t patches < <("$PY" -c "$OVERLAY_CHECK" list)
manifests=()
while IFS= read -r f; do
  f="${f#./}"
  for p in ${patches[@]+"${patches[@]}"}; do
    [ "$f" = "$p" ] && continue 2
  done
  manifests+=("$f")
done < <(find . -type f \( -name '*.yaml' -o -name '*.yml' \) \
  ! -name kustomization.yaml ! -name kustomization.yml | sort)
echo "${#manifests[@]} manifest files, ${#patches[@]} overlay patch files"

# Runs kubernetes-validate on one file (or - for stdin) and judges its output:
# ERROR and FATAL lines fail; "no schema" warnings fail unless the resource is a
# shoal.io custom resource (check 2 handles those) or a kube-scheduler
# configuration (check 3).
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
      WARN*"with api version kubescheduler.config.k8s.io/"*)
        echo "  cfg  ${line#WARN } (a kube-scheduler configuration: check 3)" ;;
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

# Check 3, as a program run on the manifest files (mode "files": FILE...) and on
# the rendered deploy/scheduler/ (mode "rendered": LABEL FILE); it exits with
# the number of problems.
IFS= read -r -d '' SCHED_CHECK <<'PY' || true
import base64
import binascii
import re
import sys

import yaml

mode, files = sys.argv[1], sys.argv[2:]
label = {}
if mode == "rendered":
    label[files[1]], files = files[0], files[1:]
failed = 0


def fail(msg):
    global failed
    failed += 1
    print(f"FAIL: {msg}")


# Fields of kubescheduler.config.k8s.io/v1 that kube-scheduler knows: it loads
# its config strictly, so any other field stops it from starting.
KSC_FIELDS = {
    "apiVersion", "kind", "parallelism", "leaderElection", "clientConnection",
    "enableProfiling", "enableContentionProfiling", "percentageOfNodesToScore",
    "podInitialBackoffSeconds", "podMaxBackoffSeconds", "profiles", "extenders",
    "delayCacheUntilActive",
}
SUB_FIELDS = {
    "leaderElection": {"leaderElect", "leaseDuration", "renewDeadline", "retryPeriod",
                       "resourceLock", "resourceName", "resourceNamespace"},
    "clientConnection": {"kubeconfig", "acceptContentTypes", "contentType", "qps", "burst"},
    "profile": {"schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"},
    "extender": {"urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight", "bindVerb",
                 "enableHTTPS", "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources",
                 "ignorable"},
    "tlsConfig": {"insecure", "serverName", "certFile", "keyFile", "caFile", "certData", "keyData",
                  "caData"},
    "managedResource": {"name", "ignoredByScheduler"},
}
# What shoal's scheduler serves (POST /filter, /prioritize; it does not bind).
SHOAL_SERVICE = "shoal-scheduler.shoal-system.svc"
SHOAL_VERBS = {"filterVerb": "filter", "prioritizeVerb": "prioritize"}
GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


def unknown(obj, allowed, what):
    if not isinstance(obj, dict):
        fail(f"{what}: must be a mapping, not {type(obj).__name__}")
        return True
    for k in sorted(set(obj) - allowed):
        fail(f"{what}: unknown field {k!r} (kube-scheduler rejects it; known: {', '.join(sorted(allowed))})")
    return False


def check_config(cfg, what):
    """A KubeSchedulerConfiguration: returns the file paths it names."""
    paths = []
    if cfg.get("apiVersion") != "kubescheduler.config.k8s.io/v1" or cfg.get("kind") != "KubeSchedulerConfiguration":
        fail(f"{what}: apiVersion/kind must be kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration, "
             f"not {cfg.get('apiVersion')} {cfg.get('kind')}")
        return paths
    unknown(cfg, KSC_FIELDS, what)
    for key in ("leaderElection", "clientConnection"):
        if key in cfg:
            unknown(cfg[key], SUB_FIELDS[key], f"{what}: {key}")
    if isinstance(cfg.get("clientConnection"), dict) and cfg["clientConnection"].get("kubeconfig"):
        paths.append(("clientConnection.kubeconfig", cfg["clientConnection"]["kubeconfig"]))
    profiles = cfg.get("profiles") or [{}]
    names = []
    for i, prof in enumerate(profiles):
        if unknown(prof, SUB_FIELDS["profile"], f"{what}: profiles[{i}]"):
            continue
        names.append(prof.get("schedulerName") or ("default-scheduler" if len(profiles) == 1 else ""))
    if "" in names or len(set(names)) != len(names):
        fail(f"{what}: profiles need distinct, non-empty schedulerNames (have {names})")
    le = cfg.get("leaderElection") or {}
    if "default-scheduler" not in names and le.get("leaderElect", True) and \
            (le.get("resourceNamespace", "kube-system"), le.get("resourceName", "kube-scheduler")) == \
            ("kube-system", "kube-scheduler"):
        fail(f"{what}: a second scheduler ({names}) that elects a leader on the default scheduler's Lease "
             f"kube-system/kube-scheduler never becomes leader: set leaderElection.resourceName/"
             f"resourceNamespace (or leaderElect: false)")
    extenders = cfg.get("extenders") or []
    if not isinstance(extenders, list) or not extenders:
        fail(f"{what}: no extenders (shoal's configs exist to add its extender)")
        return paths
    if sum(1 for e in extenders if isinstance(e, dict) and e.get("bindVerb")) > 1:
        fail(f"{what}: only one extender may have a bindVerb")
    for i, ext in enumerate(extenders):
        w = f"{what}: extenders[{i}]"
        if unknown(ext, SUB_FIELDS["extender"], w):
            continue
        url = ext.get("urlPrefix")
        if not isinstance(url, str) or not url.startswith("https://"):
            fail(f"{w}: urlPrefix must start with https:// (the API server and kube-scheduler "
                 f"reach shoal's scheduler over HTTPS), not {url!r}")
            url = ""
        for verb in ("filterVerb", "prioritizeVerb"):
            if not isinstance(ext.get(verb), str) or not ext[verb]:
                fail(f"{w}: {verb} missing (shoal's extender filters and prioritizes)")
        weight = ext.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 10:
            fail(f"{w}: weight must be an integer in 1..10 (kube-scheduler needs > 0 with a "
                 f"prioritizeVerb; above 10 the extender drowns the default plugins), not {weight!r}")
        if ext.get("nodeCacheCapable", False) is not False:
            fail(f"{w}: nodeCacheCapable must be false: shoal's extender reads full Node objects "
                 f"(status.allocatable) and keeps no node cache")
        if ext.get("ignorable") is not True:
            fail(f"{w}: ignorable must be true, or every pod fails to schedule while the extender is down")
        if ext.get("enableHTTPS") is not True:
            fail(f"{w}: enableHTTPS must be true")
        tls = ext.get("tlsConfig")
        if tls is None:
            fail(f"{w}: tlsConfig missing: give the CA of the extender's certificate (caFile or caData)")
        elif not unknown(tls, SUB_FIELDS["tlsConfig"], f"{w}: tlsConfig"):
            if tls.get("insecure"):
                fail(f"{w}: tlsConfig.insecure skips verifying the extender's certificate")
            if not (tls.get("caFile") or tls.get("caData")):
                fail(f"{w}: tlsConfig needs caFile or caData")
            for key in ("caFile", "certFile", "keyFile"):
                if tls.get(key):
                    if not str(tls[key]).startswith("/"):
                        fail(f"{w}: tlsConfig.{key} must be an absolute path, not {tls[key]!r}")
                    paths.append((f"extenders[{i}].tlsConfig.{key}", str(tls[key])))
        timeout = ext.get("httpTimeout")
        if timeout is not None and (not isinstance(timeout, str) or not GO_DURATION.fullmatch(timeout)):
            fail(f"{w}: httpTimeout must be a duration such as 1s or 500ms, not {timeout!r}")
        for j, mr in enumerate(ext.get("managedResources") or []):
            if not unknown(mr, SUB_FIELDS["managedResource"], f"{w}: managedResources[{j}]") and not mr.get("name"):
                fail(f"{w}: managedResources[{j}]: name missing")
        host = re.sub(r"^https://", "", url).split("/")[0].split(":")[0]
        if host == SHOAL_SERVICE or (tls or {}).get("serverName") == SHOAL_SERVICE:
            for verb, route in SHOAL_VERBS.items():
                if ext.get(verb) not in (None, "", route):
                    fail(f"{w}: {verb} {ext[verb]!r}: shoal's scheduler serves POST /{route}")
            for verb in ("bindVerb", "preemptVerb"):
                if ext.get(verb):
                    fail(f"{w}: {verb}: shoal's scheduler does not implement it")
        if url:
            refs.append((w, url))
    return paths


def embedded_configs(doc):
    """(key, config) for every KubeSchedulerConfiguration in a ConfigMap's data."""
    out = []
    for key, text in (doc.get("data") or {}).items():
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if isinstance(cfg, dict) and (cfg.get("kind") == "KubeSchedulerConfiguration" or
                                      str(cfg.get("apiVersion", "")).startswith("kubescheduler.config.k8s.io/")):
            out.append((key, cfg))
    return out


docs = []  # (path, doc)
for path in files:
    try:
        docs += [(label.get(path, path), d) for d in yaml.safe_load_all(open(path)) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        fail(f"{path}: not YAML: {e}")
refs = []  # (what, https URL) of extenders
services = {}  # (namespace, name) -> ports
configmaps = {}  # (namespace, name) -> {key: config}
checked = 0
for path, doc in docs:
    kind, meta = doc.get("kind"), doc.get("metadata") or {}
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    if str(doc.get("apiVersion", "")).startswith("kubescheduler.config.k8s.io/") or kind == "KubeSchedulerConfiguration":
        before = failed
        check_config(doc, path)
        checked += 1
        if failed == before:
            print(f"  ok   {path}: KubeSchedulerConfiguration")
    elif kind == "ConfigMap":
        configmaps[(ns, name)] = {}
        for key, cfg in embedded_configs(doc):
            before = failed
            configmaps[(ns, name)][key] = check_config(cfg, f"{path}: ConfigMap {ns}/{name}, {key}")
            checked += 1
            if failed == before:
                print(f"  ok   {path}: ConfigMap {ns}/{name}: {key}: KubeSchedulerConfiguration")
    elif kind == "Service":
        services[(ns, name)] = {p.get("port") for p in (doc.get("spec") or {}).get("ports") or []}
    elif kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in doc.get("webhooks") or []:
            w = f"{path}: {kind} {name}, webhook {hook.get('name')}"
            cc = hook.get("clientConfig") or {}
            try:
                base64.b64decode(str(cc.get("caBundle", "")), validate=True)
            except (binascii.Error, ValueError) as e:
                fail(f"{w}: caBundle is not base64 ({e})")
            if cc.get("service"):
                svc = cc["service"]
                refs.append((w, f"https://{svc.get('name')}.{svc.get('namespace')}.svc:{svc.get('port', 443)}"))
            checked += 1

if mode == "files":
    # Every extender URL and webhook Service names a Service of deploy/ with that
    # port (e.g. shoal-scheduler.shoal-system.svc:443 in base/scheduler.yaml).
    for what, url in refs:
        m = re.fullmatch(r"https://([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?(?::(\d+))?(/.*)?", url)
        if not m:
            continue  # outside the cluster: nothing to compare with
        name, ns, port = m.group(1), m.group(2), int(m.group(3) or 443)
        if (ns, name) not in services:
            fail(f"{what}: calls {url}, but no manifest here defines the Service {ns}/{name}")
        elif port not in services[(ns, name)]:
            fail(f"{what}: calls {url}, but the Service {ns}/{name} has ports {sorted(services[(ns, name)])}")
        else:
            print(f"  ok   {what} -> Service {ns}/{name}:{port}")
else:
    # Rendered: each container that runs kube-scheduler --config=PATH mounts a
    # ConfigMap holding PATH's file, and the files that config names are mounted.
    for path, doc in docs:
        if doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        dname = (doc.get("metadata") or {}).get("name")
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for c in pod.get("containers") or []:
            args = (c.get("command") or []) + (c.get("args") or [])
            conf = [a.split("=", 1)[1] for a in args if isinstance(a, str) and a.startswith("--config=")]
            if not conf:
                continue
            w = f"{dname}/{c.get('name')}"
            mounts = sorted(c.get("volumeMounts") or [], key=lambda m: -len(m.get("mountPath", "")))

            def source(file):
                """(volume, name of the file in it) that holds `file`, or None."""
                for m in mounts:
                    mp = m.get("mountPath", "").rstrip("/")
                    if file.startswith(mp + "/"):
                        return volumes.get(m.get("name")), file[len(mp) + 1:]
                return None

            def provides(vol, rel):
                src = vol.get("configMap") or vol.get("secret") or {}
                items = src.get("items")
                return items is None or any(i.get("path") == rel for i in items)

            found = source(conf[0])
            cm = (found or (None,))[0] or {}
            if not cm.get("configMap"):
                fail(f"{path}: {w}: --config={conf[0]} is not in a mounted ConfigMap")
                continue
            cm_name = cm["configMap"].get("name")
            key = found[1]
            for i in cm["configMap"].get("items") or []:
                if i.get("path") == key:
                    key = i.get("key")
            ns = (doc.get("metadata") or {}).get("namespace", "")
            if key not in configmaps.get((ns, cm_name), {}):
                fail(f"{path}: {w}: --config={conf[0]}: the ConfigMap {ns}/{cm_name} has no "
                     f"KubeSchedulerConfiguration under the key {key!r}")
                continue
            for field, file in configmaps[(ns, cm_name)][key]:
                vol = source(file)
                if not vol or not vol[0] or not provides(*vol):
                    fail(f"{path}: {w}: {field} {file} is not in any of its volumes")
                else:
                    print(f"  ok   {w}: {field} {file} mounted")
            print(f"  ok   {w}: --config={conf[0]} from ConfigMap {ns}/{cm_name}")

print(f"  {checked} configurations and webhooks checked")
sys.exit(min(failed, 100))
PY

echo
echo "== 3. kube-scheduler configurations, webhooks"
src=0
"$PY" -c "$SCHED_CHECK" files "${manifests[@]}" || src=$?
failures=$((failures + src))

echo
echo "== 4. base/kustomization.yaml"
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
echo "== 5. overlays: what their patches target"
orc=0
"$PY" -c "$OVERLAY_CHECK" check "$K8S_VERSION" || orc=$?
failures=$((failures + orc))

# Part of check 6, as a program run on a rendered stream (LABEL FILE); it exits
# with the number of problems.
IFS= read -r -d '' SHOAL_ENV_CHECK <<'PY' || true
import re
import sys

import yaml

# A rendered stream (LABEL FILE): the files that shoal containers name in
# SHOAL_* variables are mounted, and the security settings agree across
# components (a server with TLS or a token is useless to clients without
# them); probes of a gRPC port served over TLS are tcpSocket.
label, path = sys.argv[1], sys.argv[2]
failed = 0


def fail(msg):
    global failed
    failed += 1
    print(f"FAIL: {label}: {msg}")


FILES = ("SHOAL_TOKENS_FILE", "SHOAL_TOKEN_FILE", "SHOAL_TLS_CERT", "SHOAL_TLS_KEY", "SHOAL_TLS_CA")
# Each component's own credential: the item of the shoal-tokens Secret that its
# SHOAL_TOKEN_FILE names (README: Authentication).
CREDENTIAL = {"master": "admin", "worker": "worker", "csi": "client", "scheduler": "client", "operator": "admin"}
POD_SPEC = {"Deployment": ("spec", "template", "spec"), "StatefulSet": ("spec", "template", "spec"),
            "DaemonSet": ("spec", "template", "spec"), "Job": ("spec", "template", "spec"),
            "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"), "Pod": ("spec",)}
SERVERS = ("master", "worker")  # roles that serve gRPC

containers = []  # (what, role, env, container, pod spec)
for doc in yaml.safe_load_all(open(path)):
    if not isinstance(doc, dict) or doc.get("kind") not in POD_SPEC:
        continue
    pod = doc
    for k in POD_SPEC[doc["kind"]]:
        pod = (pod or {}).get(k) or {}
    for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        # shoal's image, whatever the registry and tag.
        image = re.sub(r"[@:][^/]*$", "", str(c.get("image", "")))
        if image.rsplit("/", 1)[-1] != "shoal":
            continue
        args = (c.get("command") or []) + (c.get("args") or [])
        role = next((a for a in args if isinstance(a, str) and not a.startswith("-")), "?")
        env = {e.get("name"): e.get("value") for e in c.get("env") or [] if str(e.get("name", "")).startswith("SHOAL_")}
        containers.append((f"{doc['kind']} {doc['metadata'].get('name')}/{c.get('name')}", role, env, c, pod))

bad = set()  # containers with a problem of their own
for what, role, env, c, pod in containers:
    before = failed
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mounts = sorted(c.get("volumeMounts") or [], key=lambda m: -len(m.get("mountPath", "")))
    for var in FILES:
        if var not in env:
            continue
        file = env[var]
        if not isinstance(file, str) or not file.startswith("/"):
            fail(f"{what}: {var} must be an absolute path (a value, not valueFrom), not {file!r}")
            continue
        for m in mounts:
            mp = m.get("mountPath", "").rstrip("/")
            if file.startswith(mp + "/"):
                vol, rel = volumes.get(m.get("name")) or {}, file[len(mp) + 1:]
                src = vol.get("secret") or vol.get("configMap")
                if src is None or m.get("subPath"):
                    fail(f"{what}: {var}={file} is in the volume {m.get('name')!r}, which is not a "
                         f"Secret or ConfigMap mounted whole")
                elif src.get("items") is not None and not any(i.get("path") == rel for i in src["items"]):
                    fail(f"{what}: {var}={file}: the volume {m.get('name')!r} projects no {rel!r} "
                         f"(items: {[i.get('path') for i in src['items']]})")
                elif not m.get("readOnly"):
                    fail(f"{what}: {var}={file}: mount {mp} read-only")
                break
        else:
            fail(f"{what}: {var}={file} is not in any mounted volume")
    if "SHOAL_TOKENS_FILE" in env and role not in SERVERS:
        fail(f"{what}: only servers ({', '.join(SERVERS)}) read the credentials table; `shoal {role}` must not hold it")
    if role in SERVERS and "SHOAL_TOKEN_FILE" in env and "SHOAL_TOKENS_FILE" not in env:
        fail(f"{what}: a server with a credential but no SHOAL_TOKENS_FILE gives that one token every role")
    want = CREDENTIAL.get(role)
    got = str(env.get("SHOAL_TOKEN_FILE", "")).rsplit("/", 1)[-1]
    if "SHOAL_TOKEN_FILE" in env and want and got != want:
        fail(f"{what}: `shoal {role}` should hold the {want} credential, not {got!r}")
    if ("SHOAL_TLS_CERT" in env) != ("SHOAL_TLS_KEY" in env):
        fail(f"{what}: SHOAL_TLS_CERT and SHOAL_TLS_KEY go together (the process refuses to start)")
    if "SHOAL_TLS_CERT" in env and role not in SERVERS:
        fail(f"{what}: SHOAL_TLS_CERT/KEY only matter to gRPC servers ({', '.join(SERVERS)}); "
             f"`shoal {role}` needs only SHOAL_TLS_CA")
    # A TLS server's gRPC port: kubelet's grpc probe speaks plaintext and an
    # httpGet probe HTTP/1.1; only tcpSocket works.
    if "SHOAL_TLS_CERT" in env:
        grpc = {p.get("name") for p in c.get("ports") or [] if p.get("name") == "grpc"}
        grpc |= {p.get("containerPort") for p in c.get("ports") or [] if p.get("name") == "grpc"}
        for a in c.get("args") or []:
            if isinstance(a, str) and a.startswith("--listen="):
                port = a.rsplit(":", 1)[-1]
                if port.isdigit():
                    grpc.add(int(port))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe) or {}
            for kind in ("grpc", "httpGet"):
                if kind in p and (p[kind] or {}).get("port") in grpc:
                    fail(f"{what}: {probe} is {kind} on the gRPC port, which serves TLS only: use tcpSocket")
    if failed != before:
        bad.add(what)

# Across components: everyone or no one.
def has(var):
    return [what for what, _, env, _, _ in containers if var in env]


def lacks(var, only=None):
    return [what for what, role, env, _, _ in containers if var not in env and (only is None or role in only)]


if has("SHOAL_TOKEN_FILE") and lacks("SHOAL_TOKEN_FILE"):
    fail(f"servers require the token, but {lacks('SHOAL_TOKEN_FILE')} set no SHOAL_TOKEN_FILE")
if has("SHOAL_TLS_CERT") or has("SHOAL_TLS_CA"):
    if lacks("SHOAL_TLS_CA"):
        fail(f"gRPC is TLS here, but {lacks('SHOAL_TLS_CA')} set no SHOAL_TLS_CA (they would speak plaintext)")
    if lacks("SHOAL_TLS_CERT", SERVERS):
        fail(f"clients use TLS, but the servers {lacks('SHOAL_TLS_CERT', SERVERS)} set no SHOAL_TLS_CERT/KEY")
# The default deploy is secure: token and TLS for everyone.
if label.startswith("base/"):
    for var, only in (("SHOAL_TOKEN_FILE", None), ("SHOAL_TLS_CA", None), ("SHOAL_TLS_CERT", SERVERS),
                      ("SHOAL_TOKENS_FILE", SERVERS)):
        if lacks(var, only):
            fail(f"base/ is secure by default, but {lacks(var, only)} set no {var}")
domains = {env.get("SHOAL_TLS_DOMAIN") for _, _, env, _, _ in containers}
if len(domains) > 1:
    fail(f"SHOAL_TLS_DOMAIN differs between shoal containers: {sorted(map(str, domains))}")
for what, role, env, _, _ in containers:
    on = [v for v in ("SHOAL_TOKENS_FILE", "SHOAL_TOKEN_FILE", "SHOAL_TLS_CERT", "SHOAL_TLS_CA") if v in env]
    print(f"  {'    ' if what in bad else 'ok  '} {what} (shoal {role}): {', '.join(on) or 'plaintext, no token'}")
print(f"  {len(containers)} shoal containers checked")
sys.exit(min(failed, 100))
PY

mapfile -t overlays < <(find ./overlays -mindepth 2 -maxdepth 2 -name kustomization.yaml -exec dirname {} \; 2>/dev/null | sed 's|^\./||' | sort)

builds=(base scheduler ${overlays[@]+"${overlays[@]}"})

echo
echo "== 6. kustomize build ${builds[*]/%//}"
if ! command -v kubectl >/dev/null; then
  echo "  skip: kubectl is not installed"
else
  rendered="$(mktemp)"
  trap 'rm -f "$rendered"' EXIT
  for dir in "${builds[@]}"; do
    echo "  -- $dir/"
    if [ "$dir" = base ] && [ "$krc" -ne 0 ]; then
      echo "  skip: base/kustomization.yaml has problems (above)"
    elif kubectl kustomize "$dir" >"$rendered"; then
      echo "  rendered $(grep -c '^kind:' "$rendered") resources"
      check_builtin - <"$rendered"
      src=0
      if [ "$dir" = scheduler ]; then
        "$PY" -c "$SCHED_CHECK" rendered "scheduler/ (rendered)" "$rendered" || src=$?
      else
        "$PY" -c "$SHOAL_ENV_CHECK" "$dir/ (rendered)" "$rendered" || src=$?
      fi
      failures=$((failures + src))
    else
      fail "kubectl kustomize $dir failed"
    fi
  done
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "validate.sh: $failures problem(s)"
  exit 1
fi
echo "validate.sh: all manifests valid"
