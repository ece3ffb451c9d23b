#!/usr/bin/env bash
# Set up ./.venv if needed, lint and format-check the code (ruff), type-check it (mypy), then run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check --quiet .
ruff format --check --quiet .
python scripts/typecheck.py
exec python -m pytest "$@"
