#!/usr/bin/env bash
# Fill .gpu_carry/ (ignored by git) with what benchmarks/gpu_check.sh reads from ../shared, which
# does not travel to the GPU machine: the fixture's Google checkpoint converted to a bertkit folder
# (reading TensorFlow's format needs google-crc32c, absent there) and its reference outputs.
# Run here, from any directory; then name .gpu_carry in the call's `carry` (about 4 MB).
#   SHARED=/path/to/shared bash benchmarks/gpu_carry.sh      # default: ../shared beside the repository
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-../shared}"
PYTHON="${PYTHON:-python3}"
rm -rf .gpu_carry
mkdir -p .gpu_carry
PYTHONPATH="$PWD/src" "$PYTHON" -m bertkit convert -i "$SHARED/fixtures/uncased_L-2_H-128_A-2.zip" -o .gpu_carry/fixture_model
cp "$SHARED/fixtures/reference_outputs.npz" .gpu_carry/
du -sh .gpu_carry
