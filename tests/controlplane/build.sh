#!/usr/bin/env bash
# Builds the local Kubernetes control plane used by the integration tests:
# kube-apiserver, kube-controller-manager, etcd and helm, at the versions pinned
# in go.mod (this directory) and helm/go.mod.
#
# The binaries are built once per version set into a cache outside the
# repository:
#   ${PEREGRINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/peregrine}/controlplane/<key>/bin/
# and linked from <repo>/target/controlplane/bin/. A warm run builds nothing.
# A build goes to a temporary directory beside the final one and is renamed
# into place only when every component has built, so an interrupted build
# never leaves a partial cache entry behind.
#
# Environment:
#   PEREGRINE_CACHE   cache root (default: $XDG_CACHE_HOME/peregrine or ~/.cache/peregrine)
#   FORCE=1           rebuild even when the cache entry exists
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

# Build settings. The module checksums are committed in go.sum; the checksum
# database is reached through the module proxy (Go's default), so no
# GONOSUMDB/GOSUMDB override is needed. GOTOOLCHAIN=local keeps go from trying
# to download another toolchain.
export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"

modver() { # modver <go.mod> <module path>
	awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1"
}

k8s_version=$(modver "$here/go.mod" k8s.io/kubernetes)
etcd_version=$(modver "$here/go.mod" go.etcd.io/etcd/server/v3)
helm_version=$(modver "$here/helm/go.mod" helm.sh/helm/v4)
if ! go_version=$(go env GOVERSION 2>/dev/null); then
	echo "build.sh: the go toolchain is not installed or not on PATH (need go >= 1.26)" >&2
	exit 1
fi
for v in k8s_version etcd_version helm_version; do
	if [[ -z ${!v} ]]; then
		echo "build.sh: could not read ${v%_version} version from go.mod" >&2
		exit 1
	fi
done

key="k8s-${k8s_version}_etcd-${etcd_version}_helm-${helm_version}_${go_version}"
cache_root=${PEREGRINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/peregrine}
cache_dir="$cache_root/controlplane"
final="$cache_dir/$key"
components=(kube-apiserver kube-controller-manager etcd helm)

link_bins() {
	local bin="$root/target/controlplane/bin"
	mkdir -p "$bin"
	for c in "${components[@]}"; do
		ln -sfn "$final/bin/$c" "$bin/$c"
	done
}

complete() {
	local c
	for c in "${components[@]}"; do
		[[ -x "$final/bin/$c" ]] || return 1
	done
}

if [[ ${FORCE:-0} != 1 ]] && complete; then
	link_bins
	echo "controlplane: using cached $key"
	exit 0
fi

mkdir -p "$cache_dir"
# One build at a time per cache; a second caller waits and then finds the
# entry complete.
exec 9>"$cache_dir/.lock"
if ! flock -n 9; then
	echo "controlplane: another build is running, waiting for it ($cache_dir/.lock)"
	flock 9
fi
if [[ ${FORCE:-0} != 1 ]] && complete; then
	link_bins
	echo "controlplane: using cached $key"
	exit 0
fi

tmp=$(mktemp -d "$cache_dir/.build-$key.XXXXXX")
build_pid=
cleanup() {
	if [[ -n $build_pid ]]; then
		kill "$build_pid" 2>/dev/null || true
		wait "$build_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "controlplane: interrupted, nothing was cached" >&2; exit 130' INT TERM
chmod 755 "$tmp"
mkdir -p "$tmp/bin" "$tmp/logs"

build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
k8s_minor=${k8s_version#v*.}
k8s_minor=${k8s_minor%%.*}
k8s_major=${k8s_version#v}
k8s_major=${k8s_major%%.*}
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
	k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
helm_ldflags="-X helm.sh/helm/v4/internal/version.version=$helm_version -X helm.sh/helm/v4/internal/version.metadata="
helm_ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
helm_k8s_version=$(modver "$here/helm/go.mod" k8s.io/client-go)
helm_ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=${helm_k8s_version/#v0./v1.}"

# build <name> <module dir> <package> <ldflags>
build() {
	local name=$1 dir=$2 pkg=$3 ldflags=$4
	local log="$tmp/logs/$name.log" start=$SECONDS last=$SECONDS
	echo "controlplane: building $name ($pkg)"
	(cd "$dir" && exec go build -v -ldflags "-s -w $ldflags" -o "$tmp/bin/$name" "$pkg") >"$log" 2>&1 &
	build_pid=$!
	while kill -0 "$build_pid" 2>/dev/null; do
		sleep 1
		if ((SECONDS - last >= 30)); then
			last=$SECONDS
			echo "controlplane:   ... $name still building, $((SECONDS - start)) s, $(grep -c -v '^go: ' "$log" || true) packages compiled"
		fi
	done
	local rc=0
	wait "$build_pid" || rc=$?
	build_pid=
	if ((rc != 0)); then
		echo "controlplane: building $name failed (exit $rc); last lines of its log:" >&2
		tail -n 40 "$log" >&2
		exit 1
	fi
	echo "controlplane: built $name in $((SECONDS - start)) s"
}

total_start=$SECONDS
echo "controlplane: cold build of $key into $final"
build kube-apiserver "$here" k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build kube-controller-manager "$here" k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build etcd "$here" go.etcd.io/etcd/server/v3 ""
build helm "$here/helm" helm.sh/helm/v4/cmd/helm "$helm_ldflags"

printf 'kubernetes %s\netcd %s\nhelm %s\ngo %s\nbuilt %s\n' \
	"$k8s_version" "$etcd_version" "$helm_version" "$go_version" "$build_date" >"$tmp/VERSIONS"
rm -rf "$tmp/logs"
if [[ -e $final ]]; then
	# FORCE=1 rebuild: swap the old entry out, then remove it.
	mv -T "$final" "$tmp.old"
	rm -rf "$tmp.old"
fi
mv -T "$tmp" "$final"
link_bins
echo "controlplane: built all components in $((SECONDS - total_start)) s; cache $(du -sh "$final" | cut -f1) at $final"
