#!/usr/bin/env bash
# CUDA checks on a GPU machine: the CUDA tests, then the asv benchmarks in quick mode on the
# current environment. Usage: bash scripts/gpu_check.sh OUTDIR [ASV_BENCH_REGEX]
# The package and its dependencies must already be importable (pip install -e ".[test,bench]").
set -u -o pipefail
out=${1:?output folder}
bench=${2:-bench_training|bench_inference}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONHASHSEED=0 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
status=0
python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -rs 2>&1 | tee "$out/pytest_cuda.log" || status=1
asv machine --yes --machine gpu >/dev/null
asv run --python=same --quick --show-stderr --machine gpu -b "$bench" 2>&1 | tee "$out/asv.log" || status=1
exit $status
