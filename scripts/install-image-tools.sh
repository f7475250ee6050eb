#!/usr/bin/env bash
# Installs what a daemonless image build needs (buildah, skopeo, umoci; musl
# for a static binary) from Debian's packages, when missing. CI runs it as
# root; elsewhere it says what to install and exits 0, so the image test can
# skip with that message.
set -euo pipefail
missing=()
for tool in buildah skopeo umoci musl-gcc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
packages=(buildah skopeo umoci musl-tools)
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "missing ${missing[*]}: install them with \`apt-get install ${packages[*]}\` as root" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
if command -v rustup >/dev/null; then
  rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
fi
