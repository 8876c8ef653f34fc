#!/usr/bin/env bash
# Installs what the project needs from Debian's packages. Idempotent and non-interactive:
# packages already present are left alone, and apt runs only when something is missing.
#
#   scripts/install-deps.sh [test|e2e|cloud|lint|all]   (default: all)
#
#   test  what `make test` needs: the reference agent (/usr/sbin/qemu-ga) and QEMU, which the
#         harness's own tests drive without booting a guest
#   e2e   what `make e2e` needs: the above, and the tools that build the tiny image and its disks
#   cloud what IMAGE=debian-cloud and IMAGE=url:/file: need on top of e2e: mmdebstrap builds the
#         image from the host's apt sources, and xorriso writes the NoCloud seed (an ISO)
#   lint  what `make lint` needs besides its Go tools: shellcheck, which actionlint runs on the
#         workflows' run: scripts (without it, actionlint skips them silently)
set -euo pipefail

tier=${1:-all}
test_pkgs=(qemu-guest-agent qemu-system-x86 qemu-utils)
e2e_pkgs=(busybox-static e2fsprogs xfsprogs cpio zstd kmod)
cloud_pkgs=(mmdebstrap xorriso)
lint_pkgs=(shellcheck)

case $tier in
  test) want=("${test_pkgs[@]}") ;;
  e2e) want=("${e2e_pkgs[@]}" "${test_pkgs[@]}") ;;
  cloud) want=("${cloud_pkgs[@]}" "${e2e_pkgs[@]}" "${test_pkgs[@]}") ;;
  lint) want=("${lint_pkgs[@]}") ;;
  all) want=("${lint_pkgs[@]}" "${cloud_pkgs[@]}" "${e2e_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 [test|e2e|cloud|lint|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() { "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; }
echo "install-deps: installing ${missing[*]}" >&2
# A fresh machine's package index can be stale (a 404 on a superseded version): refresh once
# and retry rather than fail.
if ! apt_install; then
  echo "install-deps: refreshing the package index and retrying" >&2
  "${sudo[@]}" apt-get update -q
  apt_install
fi
