#!/usr/bin/env bash
# Builds the test control plane from source through the Go module proxy: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler (one pinned Kubernetes release, tools/k8s/versions.env)
# and kwok, which plays the nodes and pods. The binaries go into a cache directory outside the
# checkout, keyed by the versions, and the build is skipped when they are already there.
#
#   bash scripts/build_k8s.sh          # builds if needed, prints the binary directory
#   COMPOSE_K8S_CACHE=/some/dir ...    # another cache root (default ~/.cache/nextunicorn-compose)
#
# A failure is a failure: nothing falls back to the emulator behind the caller's back.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

. tools/k8s/versions.env
cache_root="${COMPOSE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nextunicorn-compose}"
key="k8s-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}"
out="$cache_root/$key"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

complete() {
  local b
  for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done
  "$out/kube-apiserver" --version >/dev/null 2>&1 && "$out/etcd" --version >/dev/null 2>&1
}

if complete; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build_k8s: the go command is missing; the test control plane is built from source with it" >&2
  exit 1
fi

mkdir -p "$cache_root"
stage="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$stage"' EXIT
log() { echo "build_k8s: $*" >&2; }

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
minor="${KUBERNETES_VERSION#v1.}"
minor="${minor%%.*}"
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
  version_flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

start=$(date +%s)
log "Kubernetes ${KUBERNETES_VERSION} and etcd ${ETCD_VERSION} into $out (several minutes on a fresh machine)"
(
  cd "$repo/tools/k8s"
  go build -trimpath -ldflags "-s -w${version_flags}" -o "$stage/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
  go build -trimpath -ldflags "-s -w" -o "$stage/etcd" go.etcd.io/etcd/server/v3
)
log "kwok ${KWOK_VERSION}"
GOFLAGS="-buildvcs=false" GOBIN="$stage" go install -trimpath -ldflags "-s -w" \
  "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"

rm -rf "$out"
mkdir -p "$out"
for b in "${binaries[@]}"; do
  install -m 0755 "$stage/$b" "$out/$b"
done
if ! complete; then
  echo "build_k8s: the built binaries in $out do not run" >&2
  exit 1
fi
log "built in $(($(date +%s) - start)) s"
echo "$out"
