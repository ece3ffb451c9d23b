#!/usr/bin/env bash
# The main job: set up ./.venv if needed, then run the end-to-end demo (scripts/demo.py --help for options).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python scripts/demo.py "$@"
