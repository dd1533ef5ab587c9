#!/usr/bin/env bash
# The project's one test command: installs (scripts/setup.sh), then lint, type checks, layer
# contracts, generated-file drift checks and the whole pytest suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SKIP_SETUP:-}" != "1" ]; then
  bash scripts/setup.sh
fi
. .venv/bin/activate
bash scripts/fetch_tools.sh >/dev/null
export PATH="$(pwd)/.tools/bin:$PATH"

echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
echo "== import layers"; lint-imports
echo "== generated CRDs"; python scripts/gen_crds.py --check
echo "== rendered manifests"; python scripts/render_manifests.py --check
echo "== pytest"; python -m pytest -q -p no:cacheprovider "$@"
