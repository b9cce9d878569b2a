#!/usr/bin/env bash
# Run on a CUDA machine from the repository root: installs bertkit into the machine's Python and
# runs the bf16 correctness check and the BERT-large throughput measurements (about 5-8 minutes).
set -euo pipefail
python3 -m pip install -q --no-deps -e . 2>/dev/null || python3 -m pip install -q -e .
PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --json "${OUT:-.}/gpu_report.json" "$@"
