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
#  5. if kubectl is installed: base/ and scheduler/ render with kustomize, the
#     rendered streams pass check 1, and scheduler/'s passes check 3 with its
#     generated ConfigMap mounted where kube-scheduler's --config points.
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
echo "== 5. kustomize build base/ and scheduler/"
if ! command -v kubectl >/dev/null; then
  echo "  skip: kubectl is not installed"
else
  rendered="$(mktemp)"
  trap 'rm -f "$rendered"' EXIT
  for dir in base scheduler; do
    echo "  -- $dir/"
    if [ "$dir" = base ] && [ "$krc" -ne 0 ]; then
      echo "  skip: base/kustomization.yaml has problems (above)"
    elif kubectl kustomize "$dir" >"$rendered"; then
      echo "  rendered $(grep -c '^kind:' "$rendered") resources"
      check_builtin - <"$rendered"
      if [ "$dir" = scheduler ]; then
        src=0
        "$PY" -c "$SCHED_CHECK" rendered "scheduler/ (rendered)" "$rendered" || src=$?
        failures=$((failures + src))
      fi
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
