#!/usr/bin/env bash
# Make the two Secrets deploy/base needs (it is secure by default), then
#   kubectl apply -k deploy/base
#
#  - shoal-tokens: a random credential per role (admin, worker, client) and the
#    credentials table (tokens) that the master and workers check them against
#    (README.md: Authentication); the table holds only SHA-256 digests, so the
#    servers that mount it hold no one's credential. Each pod mounts only its
#    own credential: the master and the operator admin, workers worker, the CSI
#    plugin (and the mounts it starts) and the scheduler client.
#  - shoal-grpc-tls: a CA (ca.crt) and a certificate for the name
#    shoal.shoal-system.svc (tls.crt, tls.key) that the master and workers serve
#    gRPC with; every component verifies them against ca.crt.
#
# Usage: deploy/make-secrets.sh            create the namespace and apply both Secrets
#        deploy/make-secrets.sh --print    write both Secrets as YAML to stdout
#                                          (nothing is applied; e.g. for a GitOps repo)
# Needs openssl, and kubectl unless --print. Existing
# Secrets are replaced: restart the shoal workloads afterwards (deploy/README.md).
# Nothing secret is written to disk outside a temporary directory that is removed.
set -euo pipefail
cd "$(dirname "$0")"

print=false
case "${1:-}" in
  --print) print=true ;;
  "") ;;
  *) echo "usage: $0 [--print]" >&2; exit 2 ;;
esac
tools=(openssl base64)
$print || tools+=(kubectl)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is required" >&2; exit 1; }
done

ns=shoal-system
name=shoal.shoal-system.svc
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
umask 077

# Credentials: 32 random bytes each, hex (printable, no spaces).
for role in admin worker client; do
  openssl rand -hex 32 | tr -d '\n' >"$tmp/$role"
done
sha() { openssl dgst -sha256 -r <"$1" | cut -d' ' -f1; }
{
  echo "# role  namespaces  token (its SHA-256 digest)"
  echo "admin  *  sha256:$(sha "$tmp/admin")"
  echo "worker *  sha256:$(sha "$tmp/worker")"
  echo "client *  sha256:$(sha "$tmp/client")"
} >"$tmp/tokens"

# A CA valid ten years, and the gRPC servers' certificate, two years.
openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=shoal gRPC CA" \
  -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=$name" \
  -keyout "$tmp/tls.key" -out "$tmp/tls.csr" 2>/dev/null
printf "subjectAltName=DNS:%s,DNS:shoal-master.%s.svc\nextendedKeyUsage=serverAuth\n" "$name" "$ns" >"$tmp/ext"
openssl x509 -req -in "$tmp/tls.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 730 -extfile "$tmp/ext" -out "$tmp/tls.crt" 2>/dev/null

# One Secret as YAML: NAME, then KEY=FILE pairs.
secret() {
  local name="$1"
  shift
  printf 'apiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata:\n  name: %s\n  namespace: %s\ndata:\n' "$name" "$ns"
  for kv in "$@"; do
    printf '  %s: %s\n' "${kv%%=*}" "$(base64 -w0 <"${kv#*=}")"
  done
}
secrets() {
  secret shoal-tokens tokens="$tmp/tokens" admin="$tmp/admin" worker="$tmp/worker" client="$tmp/client"
  echo "---"
  secret shoal-grpc-tls tls.crt="$tmp/tls.crt" tls.key="$tmp/tls.key" ca.crt="$tmp/ca.crt"
}

if $print; then
  secrets
else
  kubectl apply -f base/namespace.yaml
  secrets | kubectl apply -f -
  echo "Secrets shoal-tokens and shoal-grpc-tls are in $ns; now: kubectl apply -k deploy/base"
fi
