"""Run the Xenium-like end-to-end steps once, in one process: seconds and peak RSS per step.

The data and steps are those of ``benchmarks/_xenium.py`` (5,000 genes, about 5 % non-zero
counts, sections tiled by ``pp.tile`` when larger than ``--max-tile-cells``; one training epoch
with the ``neighbourhood`` attention scope, outputs, gene R^2, loadings, genes per dimension).

Peak RSS per step: the kernel's high-water mark (``VmHWM``) is reset before each step by writing
``5`` to ``/proc/self/clear_refs`` and read after it, together with a thread that samples
``VmRSS`` every 20 ms (the only measure where the reset is not allowed). The process peak is the
largest of the step peaks and ``ru_maxrss`` (``resource.getrusage``, which the reset also
resets).

Examples
--------
::

    python scripts/bench_xenium.py --cells 100000 --sections 4
    nice -n 10 python scripts/bench_xenium.py --cells 1000000 --sections 8 > xenium_1m.log 2>&1
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._xenium import MAX_TILE_CELLS, XeniumRun  # noqa: E402

GIB = 2**30


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _Sampler:
    """Largest VmRSS seen by a 20 ms polling thread (fallback when VmHWM cannot be reset)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("VmRSS") or 0)
            self._stop.wait(0.02)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kib("VmRSS") or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--sections", type=int, default=4)
    parser.add_argument("--max-tile-cells", type=int, default=MAX_TILE_CELLS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", default=",".join(XeniumRun.STEPS), help="comma-separated steps, in order"
    )
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(XeniumRun.STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; known: {list(XeniumRun.STEPS)}")

    import torch

    print(
        f"Xenium-like run: {args.cells:,} cells x 5,000 genes in {args.sections} sections, "
        f"tiles <= {args.max_tile_cells:,} cells, device {args.device}, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    run = XeniumRun(args.cells, args.sections, args.max_tile_cells, args.device, args.seed)
    rows = []
    for step in steps:
        gc.collect()
        before = _status_kib("VmRSS") or 0
        resettable = _reset_peak()
        t0 = time.perf_counter()
        with _Sampler() as sampler:
            run.run(step)
        seconds = time.perf_counter() - t0
        hwm = _status_kib("VmHWM") if resettable else None
        peak = max(hwm or 0, sampler.peak)
        after = _status_kib("VmRSS") or 0
        rows.append((step, seconds, peak, before, after, run.notes.get(step, "")))
        print(
            f"  {step:<15} {seconds:9.1f} s   peak RSS {peak / 2**20:6.2f} GiB   "
            f"(RSS before {before / 2**20:.2f}, after {after / 2**20:.2f})   "
            f"{run.notes.get(step, '')}",
            flush=True,
        )
    # resetting VmHWM resets ru_maxrss too: the process peak is the largest step peak
    maxrss = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss] + [r[2] for r in rows])
    print()
    print("| step | seconds | peak RSS (GiB) | RSS after (GiB) | note |")
    print("|---|---:|---:|---:|---|")
    for step, seconds, peak, _before, after, note in rows:
        print(f"| {step} | {seconds:.1f} | {peak / 2**20:.2f} | {after / 2**20:.2f} | {note} |")
    total = sum(r[1] for r in rows)
    print(f"| **total** | {total:.1f} | {maxrss / 2**20:.2f} (process peak) | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
