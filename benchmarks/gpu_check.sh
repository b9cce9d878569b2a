#!/usr/bin/env bash
# The GPU check as one call on the lent machine (benchmarks/README.md): nothing installed, bertkit
# from src/, the fixture from .gpu_carry/ (made here by benchmarks/gpu_carry.sh and carried), the
# report in $OUT/gpu_report.json. Extra arguments go to gpu_check.py (--device cpu, --budget_s ...).
# No `set -e`: a failed check must not stop the parts after it; the exit status is gpu_check.py's.
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import torch, numpy, safetensors, tokenizers, tqdm' || { echo "gpu_check: a package bertkit needs is missing" >&2; exit 2; }
"$PYTHON" benchmarks/gpu_check.py --out "${OUT:-gpu_check_out}" "$@"
