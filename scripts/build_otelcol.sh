#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the tracing tests receive spans with, from source through the
# Go module proxy: the core distribution's OTLP receiver and file and debug exporters, as listed
# in tools/otelcol/builder-config.yaml. The binary goes into a cache directory outside the
# checkout, keyed by the collector's version and the sources' digest, and the build is skipped
# when it is already there.
#
#   bash scripts/build_otelcol.sh             # builds if needed, prints the binary's path
#   bash scripts/build_otelcol.sh --generate  # makes tools/otelcol's Go sources again with the
#                                             # builder (ocb) after builder-config.yaml changed
#   COMPOSE_K8S_CACHE=/some/dir ...           # another cache root (as for scripts/build_k8s.sh)
#
# A failure is a failure: nothing falls back to anything behind the caller's back.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
tools="$repo/tools/otelcol"
log() { echo "build_otelcol: $*" >&2; }

version="$(sed -n 's/^  version: *//p' "$tools/builder-config.yaml" | head -n 1)"
if [ -z "$version" ]; then
  echo "build_otelcol: tools/otelcol/builder-config.yaml: no dist.version" >&2
  exit 1
fi

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    echo "build_otelcol: the go command is missing; the collector is built from source with it" >&2
    exit 1
  fi
}

if [ "${1:-}" = "--generate" ]; then
  need_go
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "ocb v$version"
  GOFLAGS="-buildvcs=false" GOBIN="$work/bin" go install "go.opentelemetry.io/collector/cmd/builder@v$version"
  sed "s|^dist:|dist:\n  output_path: $work/gen|" "$tools/builder-config.yaml" >"$work/builder-config.yaml"
  "$work/bin/builder" --config "$work/builder-config.yaml" --skip-compilation --skip-get-modules
  # The builder's own module step runs `go mod tidy`, which also loads the tests of the
  # components; a module only their tests import is not on the proxy at every version. `-e`
  # keeps what the build needs and leaves those out.
  (
    cd "$work/gen"
    {
      echo "// The collector of the tracing tests, generated from builder-config.yaml by"
      echo "// scripts/build_otelcol.sh --generate (ocb's sources, this module file and go.sum)."
      echo "module $(sed -n 's/^  module: *//p' "$tools/builder-config.yaml")"
      echo
      echo "go 1.26.0"
    } >go.mod
    sed -n 's/^ *- gomod: *//p' "$tools/builder-config.yaml" | while read -r module release; do
      go mod edit -require="$module@$release"
    done
    go mod tidy -e
  )
  rm -f "$tools"/*.go "$tools/go.mod" "$tools/go.sum"
  cp "$work/gen"/*.go "$work/gen/go.mod" "$work/gen/go.sum" "$tools/"
  log "tools/otelcol regenerated for v$version; build it with: bash scripts/build_otelcol.sh"
  exit 0
fi

cache_root="${COMPOSE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nextunicorn-compose}"
digest="$(cat "$tools"/*.go "$tools/go.mod" "$tools/go.sum" | sha256sum | cut -c1-12)"
out="$cache_root/otelcol-$version-$digest"

complete() {
  [ -x "$out/otelcol" ] && "$out/otelcol" --version 2>/dev/null | grep -q "$version"
}

if complete; then
  echo "$out/otelcol"
  exit 0
fi

need_go
mkdir -p "$cache_root"
stage="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$stage"' EXIT

start=$(date +%s)
log "OpenTelemetry Collector $version into $out (a few minutes on a fresh machine)"
(
  cd "$tools"
  GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$stage/otelcol" .
)
rm -rf "$out"
mkdir -p "$out"
install -m 0755 "$stage/otelcol" "$out/otelcol"
if ! complete; then
  echo "build_otelcol: the built collector in $out does not run" >&2
  exit 1
fi
log "built in $(($(date +%s) - start)) s"
echo "$out/otelcol"
