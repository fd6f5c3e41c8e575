#!/usr/bin/env bash
# Installs or checks everything Krustlet's dev cluster and tests need, and builds the control
# plane. Idempotent and quick when all is there. Sourced by ./dev; run by .ci/run.
#
# Fails with a message naming the missing prerequisite; never skips.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${KRUSTLET_CACHE:=$HOME/.cache/krustlet}"

# Debian packages: the wasm C toolchain, the OCI registry, iptables (the CNI portmap plugin's and
# kube-proxy's), iproute2 (test hosts' namespaces and veths) and curl (clients in test hosts).
apt_packages=(clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 docker-registry iptables iproute2 curl)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged registry as a service where it can; ours run on free ports.
    (service docker-registry stop || true) >/dev/null 2>&1
  else
    echo "prerequisite missing: Debian packages ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

# Toolchains that the machine must already have.
command -v go >/dev/null || { echo "prerequisite missing: go (Go >= 1.26.8, to build the Kubernetes control plane)" >&2; exit 1; }
go_version=$(go env GOVERSION | sed -E 's/^go//')
[ "$(printf '%s\n' 1.26.8 "$go_version" | sort -V | head -1)" = 1.26.8 ] ||
  { echo "prerequisite missing: Go >= 1.26.8 (found go$go_version; the CNI plugins' module needs it)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "prerequisite missing: cargo (Rust >= 1.95)" >&2; exit 1; }

# The real control plane, built from upstream sources (cached by go.sum hash).
bash "$repo/test/cluster/build.sh" >&2
