#!/usr/bin/env bash
# Builds from upstream Go modules, once per source change, and links into <repo>/.bin/:
# - the real control plane (test/cluster): kube-apiserver, kube-controller-manager,
#   kube-scheduler, kubectl, kube-proxy, kubemark (the hollow node; k8s.io/kubernetes) and etcd,
#   in one `go build`, plus the dev-cluster launcher (devcluster);
# - cosign (test/tools/cosign), for the signed-modules tests;
# - the test tools (test/tools), in one `go build`: metrics-server, promlint and the CNI reference
#   plugins bridge, host-local, loopback and portmap (containernetworking/plugins), the plugins in
#   a directory of their own, linked as .bin/cni (a kubelet's --cni-bin-dir, CNI_PATH);
# - coredns, the light form (test/tools/coredns: CoreDNS with a cluster DNS's plugins only).
#
# Output: $KRUSTLET_CACHE/k8s-<version>-<hash>/, cosign-<version>-<hash>/, tools-<hash>/ (with
# cni/) and coredns-<version>-<hash>/, each keyed by a hash of its module's go.sum (and sources)
# and of its build flags, linked from <repo>/.bin/ so the binaries are found project-locally.
# Reruns with unchanged sources do nothing; the Go build cache (GOCACHE) keeps rebuilds after
# small edits fast. Each long `go build` shows its progress with the elapsed time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KRUSTLET_CACHE:-$HOME/.cache/krustlet}
command -v go >/dev/null || { echo "build.sh: prerequisite missing: go (Go >= 1.26.8)" >&2; exit 1; }

# The upstream binaries depend only on the module graph (go.sum) and this script's flags; the
# launcher is rebuilt whenever its own sources change, which is cheap.
k8s_version=$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")
hash=$( (cat "$here/go.sum"; echo "$k8s_version"; sed -n '/^# flags:/,/^# end flags/p' "$0") | sha256sum | cut -c1-16)
out="$cache/k8s-$k8s_version-$hash"

started=$(date +%s)
elapsed() { local s=$(( $(date +%s) - started )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# go_build DIR LDFLAGS PACKAGE...: one `go build` of the main packages PACKAGE... into DIR/,
# showing its progress each tenth of the packages they import (-v names each package as it is
# compiled; those found in GOCACHE are not compiled again, so a rebuild stops short of 100%).
# Anything else go build prints (errors) passes through as it comes.
go_build() {
  local dest=$1 ldflags=$2; shift 2
  local total compiled=0 step=1 line
  total=$(go list -deps "$@" | wc -l)
  echo "    one go build, at most $total packages to compile (elapsed $(elapsed))"
  go build -v -trimpath -ldflags "$ldflags" -o "$dest/" "$@" 2>&1 | {
    while IFS= read -r line; do
      if [[ $line =~ ^[A-Za-z0-9_.~+/-]+$ ]]; then
        compiled=$((compiled + 1))
        while [ $step -le 10 ] && [ $((compiled * 10)) -ge $((step * total)) ]; do
          echo "    step $step of 10: $compiled of $total packages compiled (elapsed $(elapsed))"
          step=$((step + 1))
        done
      else
        printf '%s\n' "$line" >&2
      fi
    done
    echo "    $compiled packages compiled, the rest taken from GOCACHE (elapsed $(elapsed))"
  }
}

# flags:
# kubemark is the upstream kubelet with a fake in-process runtime (the hollow node the bench
# measures Krustlet against, `krustlet-bench --against hollow`); it adds ~114 packages to the
# build, most of them pkg/kubelet.
cp_targets="kube-apiserver kube-controller-manager kube-scheduler kubectl kube-proxy kubemark etcd"
cp_packages="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy
  k8s.io/kubernetes/cmd/kubemark go.etcd.io/etcd/server/v3"
major=${k8s_version#v}; minor=${major#*.}; major=${major%%.*}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# end flags
built() { local d=$1 f; shift; for f in "$@"; do [ -x "$d/$f" ] || return 1; done; }

if ! built "$out" $cp_targets; then
  echo "==> building the Kubernetes $k8s_version control plane ($cp_targets) from source into $out"
  echo "    (the first build takes 15-25 minutes on 2 cores; later builds reuse GOCACHE)"
  tmp="$out.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  # etcd's -X flags name no package of etcd's, so they are no-ops there; go names its binary
  # after go.etcd.io/etcd/server/v3, "server".
  (cd "$here" && go_build "$tmp" "$ldflags" $cp_packages)
  mv "$tmp/server" "$tmp/etcd"
  rm -rf "$out"; mv "$tmp" "$out"
  echo "==> control plane built: $(du -sh "$out" | cut -f1) in $out (elapsed $(elapsed))"
fi
# cosign (signed-modules tests) lives in its own module so its go.sum never changes the control
# plane's cache key; one go build, cached under cosign-<version>-<hash of its go.sum>.
cosign_mod="$repo/test/tools/cosign"
cosign_version=$(awk -v m=github.com/sigstore/cosign/v2 '$1==m {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$cosign_mod/go.mod")
cosign_hash=$( (cat "$cosign_mod/go.sum"; echo "$cosign_version") | sha256sum | cut -c1-16)
cosign_out="$cache/cosign-$cosign_version-$cosign_hash"
if [ ! -x "$cosign_out/cosign" ]; then
  echo "==> building cosign $cosign_version from source into $cosign_out ($(date +%T))"
  rm -rf "$cosign_out.tmp.$$"; mkdir -p "$cosign_out.tmp.$$"
  (cd "$cosign_mod" && go build -trimpath -ldflags "-s -w" -o "$cosign_out.tmp.$$/cosign" \
    github.com/sigstore/cosign/v2/cmd/cosign)
  rm -rf "$cosign_out"; mv "$cosign_out.tmp.$$" "$cosign_out"
fi
mkdir -p "$repo/.bin"; ln -sfn "$cosign_out/cosign" "$repo/.bin/cosign"

# The launcher: go build is incremental, so this is quick when nothing changed.
(cd "$here" && go build -trimpath -o "$out/devcluster" ./cmd/devcluster)

# Test tools (metrics-server, promlint, the CNI plugins) from their own module (test/tools), so
# that changing them never changes the control plane's cache key; one `go build` for all of them.
# The CNI plugins go into cni/, which holds nothing else: a CNI runtime finds plugins by name in
# its plugin dirs (CNI_PATH, a kubelet's --cni-bin-dir).
tools="$repo/test/tools"
tools_hash=$( (cat "$tools/go.mod" "$tools/go.sum" "$tools"/cmd/*/*.go; sed -n '/^# tools flags:$/,/^# end tools flags$/p' "$0") | sha256sum | cut -c1-16)
tools_out="$cache/tools-$tools_hash"
# tools flags:
cni_plugins="bridge host-local loopback portmap"
tools_packages="./cmd/promlint sigs.k8s.io/metrics-server/cmd/metrics-server
  github.com/containernetworking/plugins/plugins/main/bridge
  github.com/containernetworking/plugins/plugins/ipam/host-local
  github.com/containernetworking/plugins/plugins/main/loopback
  github.com/containernetworking/plugins/plugins/meta/portmap"
# end tools flags
if ! built "$tools_out" metrics-server promlint || ! built "$tools_out/cni" $cni_plugins; then
  echo "==> building the test tools (metrics-server, promlint, CNI plugins $cni_plugins) into $tools_out (elapsed $(elapsed))"
  echo "    (a first build takes several minutes more: metrics-server is a whole aggregated API server)"
  tmp="$tools_out.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/cni"
  (cd "$tools" && go_build "$tmp" "-s -w" $tools_packages)
  for p in $cni_plugins; do mv "$tmp/$p" "$tmp/cni/$p"; done
  rm -rf "$tools_out"; mv "$tmp" "$tools_out"
  echo "==> test tools built (elapsed $(elapsed))"
fi

# coredns, the light form: our main package (test/tools/coredns/main.go) with CoreDNS's server and
# only a cluster DNS's plugins, in its own module since CoreDNS's client-go and metrics-server's
# k8s.io/apiserver admit no common version; cached under coredns-<version>-<hash>.
coredns_mod="$repo/test/tools/coredns"
coredns_version=$(awk -v m=github.com/coredns/coredns '$1==m {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$coredns_mod/go.mod")
coredns_hash=$( (cat "$coredns_mod/go.mod" "$coredns_mod/go.sum" "$coredns_mod"/*.go) | sha256sum | cut -c1-16)
coredns_out="$cache/coredns-$coredns_version-$coredns_hash"
if ! built "$coredns_out" coredns; then
  echo "==> building coredns $coredns_version (light: a cluster DNS's plugins) into $coredns_out (elapsed $(elapsed))"
  tmp="$coredns_out.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  (cd "$coredns_mod" && go_build "$tmp" "-s -w" .)
  rm -rf "$coredns_out"; mv "$tmp" "$coredns_out"
  echo "==> coredns built (elapsed $(elapsed))"
fi

mkdir -p "$repo/.bin"
for f in "$out"/* "$tools_out"/* "$coredns_out"/*; do ln -sfn "$f" "$repo/.bin/$(basename "$f")"; done
echo "$out"
