#!/usr/bin/env bash
# Creates .venv (Python 3.11) with every component and the test and lint tools installed.
# The CPU build of torch is pinned here; the GPU build is installed by inference_image/Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
if ! command -v "$python" >/dev/null 2>&1; then
  python=python3
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# System packages the tests run for real, from Debian: Redis (the shared rate limit's tests)
# and Chromium (the studio page's browser test, driven by Playwright without its own download).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    sudo=sudo
  fi
  if command -v apt-get >/dev/null 2>&1; then
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: ${missing[*]} missing and apt-get is not available; install them" >&2
    exit 1
  fi
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade "pip>=25.1"
python -m pip install --quiet "torch==2.13.0"
# (Playwright's wheel brings no browser, and `playwright install` is never run: the studio's test
# drives Debian's chromium, installed above.)
python -m pip install --quiet -e '.[operator,inference,gateway]' --group test --group lint
echo "installed into $(pwd)/.venv"

# The test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok),
# built from source once per machine into a cache outside the checkout.
bash scripts/build_k8s.sh >/dev/null
# The OpenTelemetry Collector the tracing tests receive spans with (the core distribution's OTLP
# receiver and file exporter), built the same way into the same cache.
bash scripts/build_otelcol.sh >/dev/null
