#!/usr/bin/env bash
# CUDA checks on a GPU machine, in one go:
#   1. the CUDA tests and the FlexAttention tests (tests/test_cuda.py tests/test_flex.py);
#   2. the asv benchmarks in quick mode on the current environment (if asv is installed and
#      GPU_CHECK_ASV is not 0), results saved under the HEAD commit;
#   3. a direct timing of the CUDA parameters of the same benchmark classes (one warm-up call,
#      then the best of GPU_CHECK_REPEAT calls, with torch.cuda.synchronize), printed as a table
#      (also written to OUTDIR/cuda_table.md).
# Usage: bash scripts/gpu_check.sh OUTDIR [ASV_BENCH_REGEX] [CLASSES]
#   ASV_BENCH_REGEX  default 'TrainEpoch|LargeSampleStep|ModelOutput'
#   CLASSES          comma-separated benchmark classes timed in step 3, default
#                    'TrainEpoch,ModelOutput,LargeSampleStep,LargeSampleStepKernel'
# Environment: GPU_CHECK_ASV=0 skips step 2; GPU_CHECK_MAX_CELLS (default 1000000) skips larger
# cases in step 3; GPU_CHECK_REPEAT (default 3).
# The package and its dependencies must already be importable (pip install -e ".[test,bench]").
set -u -o pipefail
out=${1:?output folder}
bench=${2:-TrainEpoch|LargeSampleStep|ModelOutput}
classes=${3:-TrainEpoch,ModelOutput,LargeSampleStep,LargeSampleStepKernel}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONHASHSEED=0 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
status=0

python3 -m pytest tests/test_cuda.py tests/test_flex.py -q -p no:cacheprovider -rs 2>&1 \
    | tee "$out/pytest_cuda.log" || status=1

if [ "${GPU_CHECK_ASV:-1}" != "0" ] && command -v asv >/dev/null; then
    asv machine --yes --machine gpu >/dev/null
    # CPU parameters of these classes are quick (TrainEpoch, ModelOutput) or skipped by setup
    # (LargeSampleStep sizes, forced kernels); asv's -b selects classes, not parameters.
    asv run --python=same --quick --show-stderr --machine gpu --set-commit-hash HEAD \
        -b "$bench" 2>&1 | tee "$out/asv.log" || status=1
fi

python3 - "$classes" "$out/cuda_table.md" <<'EOF' || status=1
import importlib, inspect, itertools, os, sys, time, warnings

import torch

sys.path.insert(0, os.getcwd())
wanted = sys.argv[1].split(",")
max_cells = int(os.environ.get("GPU_CHECK_MAX_CELLS", "1000000"))
repeat = int(os.environ.get("GPU_CHECK_REPEAT", "3"))
found = {}
for stem in ("bench_training", "bench_inference", "bench_scale"):
    module = importlib.import_module(f"benchmarks.{stem}")
    for name, cls in inspect.getmembers(module, inspect.isclass):
        if name in wanted and cls.__module__ == module.__name__:
            found[name] = cls
rows = []
for name in wanted:
    cls = found.get(name)
    if cls is None:
        print(f"no benchmark class {name}", file=sys.stderr)
        continue
    params = cls.params if isinstance(cls.params[0], (list, tuple)) else (cls.params,)
    for args in itertools.product(*params):
        if args[0] != "cuda":
            continue
        cells = [int(a.rsplit("-", 1)[1]) for a in args if isinstance(a, str) and "-" in a]
        if cells and cells[0] > max_cells:
            continue
        label = ", ".join(map(str, args[1:])) or "-"
        inst = cls()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inst.setup(*args)
        except NotImplementedError as exc:
            print(f"skip {name}[{label}]: {exc}", flush=True)
            continue
        except Exception as exc:  # report and go on with the next case
            rows.append((name, label, f"FAIL {type(exc).__name__}", "", ""))
            continue
        for method in sorted(m for m in dir(inst) if m.startswith("time_")):
            fn = getattr(inst, method)
            try:
                fn(*args)  # warm-up (compilation, allocator)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                best = float("inf")
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    fn(*args)
                    torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - t0)
                peak = torch.cuda.max_memory_allocated() / 2**30
                rows.append((name, label, method, f"{best:.3f}", f"{peak:.2f}"))
            except Exception as exc:
                rows.append((name, label, method, f"FAIL {type(exc).__name__}: {exc}"[:80], ""))
            print(rows[-1], flush=True)
        del inst
        torch.cuda.empty_cache()
lines = [
    "| benchmark | parameters | method | best s | CUDA peak GiB |",
    "|---|---|---|---|---|",
    *(f"| {' | '.join(r)} |" for r in rows),
]
table = "\n".join(lines)
print(table)
with open(sys.argv[2], "w") as fh:
    fh.write(table + "\n")
sys.exit(1 if any("FAIL" in r[2] or "FAIL" in r[3] for r in rows) else 0)
EOF
exit $status
