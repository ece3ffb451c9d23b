#!/usr/bin/env bash
# Create ./.venv with Kogitune (editable), torch (CPU), transformers and the test tools. Safe to run again:
# it does nothing when pyproject.toml and this script are unchanged since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
. .venv/bin/activate
stamp=.venv/.kogitune-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setting up .venv (about a minute on a fresh machine)..."
# libp2p 0.8.1 builds fastecdsa from source: it needs a C compiler and GMP's headers.
if ! dpkg -s build-essential libgmp-dev >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq build-essential libgmp-dev >/dev/null
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
# Pinned first: this build is on local disk and CPU-only; an unpinned torch may pull a 5 GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[train,test]"
echo "$want" > "$stamp"
