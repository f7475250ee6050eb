#!/usr/bin/env bash
# `make bench`: the local control plane, a release build of the operator, and
# peregrine-loadgen playing many Falco nodes against it over mutual TLS. The
# loadgen starts the operator once per profile, prints a table and, last, one
# JSON line with every figure; each run's JSON is kept under target/bench/.
#
#   make bench                              steady, noisy, storm, max (a few minutes)
#   make bench BENCH_ARGS=--long            a minute per profile
#   make bench BENCH_ARGS='--profiles noisy --seconds 3'   a smoke run
#   make bench BENCH_ARGS='--auth token'    Falcosidekick-style bearer tokens instead
#
# Load goes to 127.0.0.1 only, and every loop stops on its own.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
started_controlplane=

cleanup() {
	if [[ -n $started_controlplane ]]; then
		make --no-print-directory controlplane-down >&2 || true
	fi
}
trap cleanup EXIT

echo "== release build of peregrine and peregrine-loadgen" >&2
cargo build --release --quiet -p peregrine --bin peregrine -p peregrine-bench --bin peregrine-loadgen

echo "== local control plane" >&2
if [[ ! -f target/controlplane/kubeconfig ]]; then
	started_controlplane=1
fi
make --no-print-directory controlplane >&2
export KUBECONFIG=$root/target/controlplane/kubeconfig

# One connection per simulated node, on both sides of loopback.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p target/bench
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
target/release/peregrine-loadgen \
	--operator target/release/peregrine \
	--catalog tests/data/falco-rules-catalog.json \
	--out-dir target/bench \
	"$@"
