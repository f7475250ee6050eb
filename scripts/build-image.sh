#!/usr/bin/env bash
# Builds the operator's image without a container engine: buildah from
# scratch (vfs storage, chroot isolation), committed as an OCI archive.
#
#   scripts/build-image.sh                 static release binary (musl), as `make image`
#   scripts/build-image.sh --binary PATH   package this binary (with the shared
#                                          libraries `ldd` lists when it is dynamic)
#   --out FILE                             default target/image/peregrine.tar
#   --tag NAME                             default peregrine:<version>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
binary=""
out=target/image/peregrine.tar
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
tag="peregrine:$version"
while (($#)); do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for tool in buildah; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-image-tools.sh" >&2; exit 1; }
done
if [[ -z $binary ]]; then
  musl=x86_64-unknown-linux-musl
  if rustup target list --installed 2>/dev/null | grep -qx "$musl" && command -v musl-gcc >/dev/null; then
    cargo build --release --locked --bin peregrine --target "$musl"
    binary=${CARGO_TARGET_DIR:-target}/$musl/release/peregrine
  else
    echo "no musl target (rustup target add $musl; apt-get install musl-tools): packaging the glibc binary and its libraries" >&2
    cargo build --release --locked --bin peregrine
    binary=${CARGO_TARGET_DIR:-target}/release/peregrine
  fi
fi
[[ -x $binary ]] || { echo "$binary is not an executable" >&2; exit 1; }

storage=${PEREGRINE_IMAGE_STORAGE:-target/image/storage}
mkdir -p "$storage" "$(dirname "$out")"
storage=$(cd "$storage" && pwd)
bah() {
  buildah --storage-driver vfs --root "$storage/root" --runroot "$storage/run" "$@"
}
export BUILDAH_ISOLATION=chroot

# The root filesystem: the binary, CA certificates for HTTPS notify endpoints,
# passwd entries for user 65532, and for a dynamic binary its libraries.
rootfs=$(mktemp -d)
ctr=""
cleanup() {
  rm -rf "$rootfs"
  [[ -n $ctr ]] && bah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
install -D -m 0755 "$binary" "$rootfs/peregrine"
strip "$rootfs/peregrine" 2>/dev/null || true
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
mkdir -p "$rootfs/etc" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
echo "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin" >"$rootfs/etc/passwd"
echo "nonroot:x:65532:" >"$rootfs/etc/group"
if ldd "$binary" >/dev/null 2>&1; then
  # Dynamic: copy every library and the loader where the binary looks for them.
  while read -r lib; do
    install -D -m 0755 "$lib" "$rootfs$lib"
  done < <(ldd "$binary" | grep -o '/[^ ]*' | sort -u)
fi

ctr=$(bah from --pull-never scratch)
bah copy --quiet "$ctr" "$rootfs/" / >/dev/null
bah config \
  --user 65532:65532 \
  --entrypoint '["/peregrine"]' \
  --cmd run \
  --port 2801/tcp --port 8081/tcp \
  --env PEREGRINE_LOG_FORMAT=json \
  --env MIMALLOC_ALLOW_THP=0 \
  --label org.opencontainers.image.title=peregrine \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.source=https://github.com/peregrine-dev/peregrine \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$ctr"
rm -f "$out"
bah commit --quiet --format oci "$ctr" "oci-archive:$out:$tag" >/dev/null
echo "$out ($tag, $(du -h "$out" | cut -f1))"
