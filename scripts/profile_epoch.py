"""Profile one CPU training epoch (asv TrainEpoch) and compare it with its physical floor.

Usage (from the repository root; 2 torch threads unless ``--threads`` says otherwise)::

    python scripts/profile_epoch.py [--threads 2] [--repeats 2] [--rows 25] [--precision 32]

The epoch is the asv ``TrainEpoch``: the Legnini-shaped built-in dataset (17 organoids, 43,815
cells, 88 genes, split 10/5/2), the published configuration (batch of 3 samples, full
attention), one epoch of training plus validation through ``model.train(max_epochs=1)``.

Printed, in order:

* the wall time of the epoch (best of ``--repeats`` after one warm-up epoch);
* the top operators of ``torch.profiler`` (CPU, self time) over one epoch;
* the top Python functions of ``cProfile`` (cumulative time) over one epoch, which attributes
  the operators to the code that calls them (attention forward / backward, GCN, decoders,
  optimiser, validation, mask building);
* the machine's ``torch.exp`` throughput with the chosen threads, on a cache-resident float32
  block (the compute rate) and on a large tensor streamed from memory;
* the softmax exponentials of one epoch, ``heads x layers x sum(L^2)`` over the training
  samples twice (forward, and the backward's recomputation of the probabilities) plus the
  validation samples once (forward), with ``L = cells + 1`` (the CLS token), and the floor in
  seconds that they cost at the measured throughput.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import legnini_sized, published_config, setup_model  # noqa: E402


def exp_throughput(n: int, calls: int, repeats: int = 3) -> float:
    """Elements per second of ``torch.exp`` over ``n`` float32 values, ``calls`` calls in a row.

    ``n = 2**17`` (0.5 MiB in, 0.5 MiB out) stays in the L2 cache, as the score blocks of a
    fused attention kernel do: the compute rate. ``n = 2**25`` (128 MiB) streams from memory.
    """
    x = torch.randn(n, dtype=torch.float32)
    out = torch.empty_like(x)
    torch.exp(x, out=out)  # page in ``out``
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.exp(x, out=out)
        best = min(best, (time.perf_counter() - t0) / calls)
    return n / best


def softmax_exponentials(adata, cfg) -> dict[str, float]:
    """Exponentials of the full-scope softmax in one epoch (train forward + recompute, val)."""
    params = cfg.model.global_component.parameters
    per_score = params.n_heads * params.num_layers
    obs = adata.obs
    counts = obs.groupby(["split", "sample"], observed=True).size()
    sum_l2 = {
        split: float(sum((int(s) + 1) ** 2 for s in counts.get(split, [])))
        for split in ("train", "val")
    }
    total = per_score * (2 * sum_l2["train"] + sum_l2["val"])
    return {
        "heads x layers": per_score,
        "sum L^2 train": sum_l2["train"],
        "sum L^2 val": sum_l2["val"],
        "exponentials": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--no-profile", action="store_true", help="only time and compute")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    adata = legnini_sized()
    cfg = published_config("cpu", **{"optim.precision": args.precision})
    model = setup_model(adata, cfg)

    def epoch() -> None:
        model.train(max_epochs=1, early_stopping=False, progress_bar=False, accelerator="cpu")

    epoch()  # warm-up: allocator, graph cache, optimiser state
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"threads={torch.get_num_threads()} precision={args.precision}")
    print(f"epoch wall time: best {best:.3f} s of {', '.join(f'{t:.3f}' for t in times)}")

    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            epoch()
        print("\n== torch.profiler: operators by self CPU time (one epoch, profiler on) ==")
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        print(table)

        profiler = cProfile.Profile()
        profiler.enable()
        epoch()
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).sort_stats("cumulative")
        stats.print_stats(r"interscale|torch/optim|torch/autograd/__init__", args.rows)
        print("== cProfile: interscale / optimiser functions by cumulative time (one epoch) ==")
        print(stream.getvalue().split("\n", 6)[-1] if "ncalls" in stream.getvalue() else "")

    counts = softmax_exponentials(adata, cfg)
    print("== physical floor ==")
    for name, value in counts.items():
        print(f"{name}: {value:.4g}")
    threads = torch.get_num_threads()
    for label, n, calls in (("in cache, 2^17", 1 << 17, 2000), ("streaming, 2^25", 1 << 25, 5)):
        rate = exp_throughput(n, calls)
        floor = counts["exponentials"] / rate
        print(
            f"torch.exp {label} floats ({threads} threads): {rate:.3e} elements/s -> floor "
            f"{floor:.3f} s, epoch / floor {best / floor:.1f}x"
        )
    sizes = adata.obs.groupby("sample", observed=True).size().to_numpy()
    print(f"samples: {sizes.size}, cells {int(sizes.sum())} (min {sizes.min()}, max {sizes.max()})")
    print(f"mean cells per sample: {np.mean(sizes):.0f}")


if __name__ == "__main__":
    main()
