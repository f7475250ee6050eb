#!/usr/bin/env bash
# Creates the intake's mutual-TLS material for the plain manifests (the Helm
# chart makes it itself): a CA, the server certificate Secret in
# peregrine-system and Falco's client certificate Secret in the falco namespace.
#
#   deploy/make-certs.sh [PEREGRINE_NAMESPACE] [FALCO_NAMESPACE]
set -euo pipefail
ns=${1:-peregrine-system}
falco_ns=${2:-falco}
svc=peregrine-intake
days=3650
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=peregrine intake CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$svc.$ns.svc" \
  -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
  "$svc" "$svc" "$ns" "$svc" "$ns" "$svc" "$ns" >server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -extfile server.ext -out server.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=falco" \
  -keyout client.key -out client.csr 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' >client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -extfile client.ext -out client.crt 2>/dev/null
kubectl create secret generic peregrine-intake-tls -n "$ns" --type=kubernetes.io/tls \
  --from-file=tls.crt=server.crt --from-file=tls.key=server.key --from-file=ca.crt=ca.crt \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl create secret generic peregrine-falco-client -n "$falco_ns" --type=kubernetes.io/tls \
  --from-file=tls.crt=client.crt --from-file=tls.key=client.key --from-file=ca.crt=ca.crt \
  --dry-run=client -o yaml | kubectl apply -f -
echo "the CA key is not kept: run this again (and restart Peregrine and Falco) to renew" >&2
