#!/usr/bin/env bash
# `make demo`: a local control plane, the CRDs, the operator, a replay of the
# sample alerts in examples/alerts/, then what `kubectl get alertreports`
# shows, and a sample policy from examples/policies/ deciding on a report.
# Everything it started is stopped at the end.
#
# Environment: DEMO_INTAKE_PORT (default 2801), DEMO_HEALTH_PORT (default 8081),
# DEMO_CONTROLPLANE_DIR (default target/controlplane; another directory runs
# a control plane of its own next to one already in use).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
intake_port=${DEMO_INTAKE_PORT:-2801}
health_port=${DEMO_HEALTH_PORT:-8081}
cp_dir=${DEMO_CONTROLPLANE_DIR:-target/controlplane}
work=$(mktemp -d)
operator_pid=
started_controlplane=

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
	local status=$?
	if [[ -n $operator_pid ]] && kill -0 "$operator_pid" 2>/dev/null; then
		kill -TERM "$operator_pid" 2>/dev/null || true
		wait "$operator_pid" 2>/dev/null || true
	fi
	if [[ -n $started_controlplane ]]; then
		make --no-print-directory controlplane-down CONTROLPLANE_DIR="$cp_dir" || true
	fi
	if ((status != 0)) && [[ -f $work/operator.log ]]; then
		echo "the demo failed; the operator's log ends with:" >&2
		tail -n 30 "$work/operator.log" >&2
	fi
	rm -rf "$work"
}
trap cleanup EXIT

if ! command -v kubectl >/dev/null; then
	echo "demo.sh: kubectl is needed to show the reports; install it and run make demo again" >&2
	exit 1
fi

step "Local control plane (etcd, kube-apiserver, kube-controller-manager)"
if [[ ! -f $cp_dir/kubeconfig ]]; then
	started_controlplane=1
fi
make --no-print-directory controlplane CONTROLPLANE_DIR="$cp_dir"
export KUBECONFIG=$root/$cp_dir/kubeconfig

step "CRDs from crds/"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established crd/alertreports.peregrine.dev --timeout=60s

step "Namespaces and workloads the sample alerts are about"
for ns in peregrine-system shop payments; do
	kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
kubectl apply -n shop -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.example.com/shop/web:1.4.2
        securityContext: {privileged: true}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: postgres
        image: docker.io/library/postgres:16.4
YAML
# No scheduler runs here: the pods exist (Pending), which is all enrichment needs.
web_pod=
for _ in $(seq 300); do
	web_pod=$(kubectl -n shop get pods -l app=web -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
	db_pod=$(kubectl -n shop get pods -l app=db -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
	[[ -n $web_pod && -n $db_pod ]] && break
	sleep 0.2
done
[[ -n $web_pod ]] || { echo "the web pod was not created" >&2; exit 1; }
echo "web pod: $web_pod, db pod: $db_pod"
# Remediation verifies its target before acting: the pod must run on the
# alert's node with the alert's container id. Stand in for the scheduler and
# the kubelet so the web pod is that pod.
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: worker-1, labels: {kubernetes.io/hostname: worker-1}}
YAML
if [[ -z $(kubectl -n shop get pod "$web_pod" -o jsonpath='{.spec.nodeName}') ]]; then
	kubectl create -f - >/dev/null <<YAML
apiVersion: v1
kind: Binding
metadata: {name: $web_pod, namespace: shop}
target: {apiVersion: v1, kind: Node, name: worker-1}
YAML
fi
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
kubectl -n shop patch pod "$web_pod" --subresource=status --type=merge -p "{\"status\": {
	\"phase\": \"Running\",
	\"containerStatuses\": [{\"name\": \"web\", \"image\": \"registry.example.com/shop/web:1.4.2\", \"imageID\": \"\",
		\"containerID\": \"containerd://3f2a9c1b7d4e$(printf '0%.0s' $(seq 52))\",
		\"ready\": true, \"started\": true, \"restartCount\": 0,
		\"state\": {\"running\": {\"startedAt\": \"$started_at\"}}}]}}" >/dev/null
echo "web pod running on node worker-1 (container 3f2a9c1b7d4e, as the alert says)"

step "The operator (peregrine run), with a bearer token"
cargo build --quiet --bin peregrine
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
target/debug/peregrine run \
	--namespace peregrine-system \
	--intake-addr "127.0.0.1:$intake_port" \
	--health-addr "127.0.0.1:$health_port" \
	--intake-token-file "$work/token" \
	>"$work/operator.log" 2>&1 &
operator_pid=$!
for _ in $(seq 600); do
	if ! kill -0 "$operator_pid" 2>/dev/null; then
		echo "the operator exited:" >&2
		cat "$work/operator.log" >&2
		operator_pid=
		exit 1
	fi
	# Logged once the caches are filled and the intake listens.
	grep -q "accepting Falco alerts" "$work/operator.log" && break
	sleep 0.1
done
grep "accepting Falco alerts" "$work/operator.log"

step "Replay of examples/alerts/ (the web alerts name the live web pod)"
mkdir "$work/alerts"
for f in examples/alerts/*.json; do
	sed "s/web-7d9f8b6c5d-x2k4q/$web_pod/g" "$f" >"$work/alerts/$(basename "$f")"
done
url="http://127.0.0.1:$intake_port/v1/falco"
target/debug/peregrine replay --url "$url" --token-file "$work/token" "$work/alerts"
echo "and the noisy one, 500 more times:"
target/debug/peregrine replay --url "$url" --token-file "$work/token" --repeat 500 \
	"$work/alerts/04-contact-k8s-api-from-db.json"

step "kubectl get alertreports -A"
expected=$(ls examples/alerts/*.json | wc -l)
for _ in $(seq 150); do
	have=$(kubectl get alertreports -A --no-headers 2>/dev/null | wc -l)
	count=$(kubectl -n shop get ar -l peregrine.dev/rule=contact-k8s-api-server-from-container \
		-o jsonpath='{.items[0].status.occurrences.count}' 2>/dev/null || true)
	((have >= expected)) && [[ $count == 501 ]] && break
	sleep 0.2
done
kubectl get alertreports -A

step "A first policy: kubectl -n shop apply -f examples/policies/label-shells-dry-run.yaml"
kubectl -n shop apply -f examples/policies/label-shells-dry-run.yaml
shell_report=$(kubectl -n shop get ar -l peregrine.dev/rule=terminal-shell-in-container -o name)
decided=
for _ in $(seq 150); do
	decided=$(kubectl -n shop get "$shell_report" -o jsonpath='{.status.remediations[*].state}' 2>/dev/null || true)
	[[ -n $decided ]] && break
	sleep 0.2
done
[[ -n $decided ]] || { echo "the policy decided nothing on $shell_report" >&2; exit 1; }
echo "status.remediations of $shell_report:"
kubectl -n shop get "$shell_report" -o jsonpath='{range .status.remediations[*]}  policy: {.policy}{"\n"}  action: {.action}  target: {.target}{"\n"}  state:  {.state}{"\n"}  reason: {.reason}{"\n"}  decided at: {.decidedAt}{"\n"}{end}'
echo "the pod's labels (DryRun changed nothing):"
kubectl -n shop get pod "$web_pod" -o jsonpath='  {.metadata.labels}{"\n"}'
for _ in $(seq 50); do
	kubectl -n shop get remediationpolicy label-shells -o jsonpath='{.status.conditions[0].type}' 2>/dev/null | grep -q Ready && break
	sleep 0.2
done
kubectl -n shop get remediationpolicies
echo "to act, set mode: Enforce; see \"Write a first policy\" in the README"

report=$(kubectl -n shop get ar -l peregrine.dev/rule=drop-and-execute-new-binary-in-container -o name)
step "One report in full: kubectl -n shop get $report -o yaml"
kubectl -n shop get "$report" -o yaml

step "Stopping (SIGTERM): the operator writes what it accepted, then exits"
kill -TERM "$operator_pid"
wait "$operator_pid" || true
operator_pid=
grep -E "writing|written|stopped" "$work/operator.log" || true
