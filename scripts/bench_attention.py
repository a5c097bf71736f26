"""Benchmarks of the global attention: kernel alternatives, training-step cost and memory, epoch.

Usage (2 threads, as on the project machines)::

    python scripts/bench_attention.py kernels [--cells 4318]   # alternatives, one layer fwd+bwd
    python scripts/bench_attention.py step [--sizes 1000 4318 20000] [--scopes full ...]
    python scripts/bench_attention.py epoch                      # 10 samples, ~26k train cells

``step`` runs every (size, scope) in a fresh subprocess and reports the wall time of one training
step (forward + backward through GCN + global encoder + two linear decoders, 88 genes, random
data) and the peak resident set size of that process (``resource.getrusage``), which includes the
Python interpreter and torch (the ``base`` column: RSS before the first step).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from interscale.nn import GCNEncoder, GlobalEncoder, make_decoder
from interscale.nn._attention import KeyMask, blocked_attention

N_GENES = 88
N_HEADS = 4
HEAD_DIM = 4


def _random_graph(n: int, mean_degree: float, rng: np.random.Generator) -> torch.Tensor:
    """Symmetric radius graph on uniform points with about ``mean_degree`` neighbours per cell."""
    pts = rng.random((n, 2))
    radius = math.sqrt(mean_degree / (math.pi * n))
    pairs = cKDTree(pts).query_pairs(radius, output_type="ndarray")
    ei = np.concatenate([pairs, pairs[:, ::-1]]).T
    return torch.as_tensor(np.ascontiguousarray(ei), dtype=torch.long)


# --------------------------------------------------------------------------- kernel alternatives
def _qkv(s: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (1, N_HEADS, s + 1, HEAD_DIM)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


def _bool_mask(s: int) -> torch.Tensor:
    """Allowed keys (True) for ``full``: cells see every other cell and CLS (last), CLS sees all."""
    allowed = ~torch.eye(s + 1, dtype=torch.bool)
    allowed[-1, -1] = True
    return allowed


def _k_sdpa_bool(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_bool_mask(q.shape[2] - 1))


def _k_sdpa_bool_blocks_ckpt(q, k, v, block=1024):
    s = q.shape[2] - 1
    km = KeyMask(s)

    def one(qb, k, v, start, stop):
        allowed = km.block(start, stop, q.dtype, q.device) == 0
        return F.scaled_dot_product_attention(qb, k, v, attn_mask=allowed)

    outs = []
    for a in range(0, s + 1, block):
        b = min(a + block, s + 1)
        outs.append(
            torch.utils.checkpoint.checkpoint(one, q[:, :, a:b], k, v, a, b, use_reentrant=False)
        )
    return torch.cat(outs, dim=2)


def _k_sentinel(q, k, v):
    """Maskless SDPA with one extra 'sentinel' key whose score equals each query's self score.

    The extra head dimension carries ``q_i . k_i`` on the query side and a 1 on the sentinel key,
    so the sentinel's probability ``p_i`` equals the self-attention probability; its one-hot
    value returns ``p_i``.  Self and sentinel are then removed: ``(o_i - p_i v_i) / (1 - 2 p_i)``
    for cells, ``o / (1 - p)`` for CLS (which keeps its self term).
    """
    s = q.shape[2] - 1
    self_score = (q * k).sum(-1, keepdim=True)
    zeros = torch.zeros_like(self_score)
    q2 = torch.cat([q, self_score], -1)
    k2 = torch.cat([k, zeros], -1)
    v2 = torch.cat([v, zeros], -1)
    sent_k = torch.zeros(1, N_HEADS, 1, HEAD_DIM + 1)
    sent_k[..., -1] = 1.0
    sent_v = sent_k.clone()
    k2 = torch.cat([k2, sent_k], 2)
    v2 = torch.cat([v2, sent_v], 2)
    o = F.scaled_dot_product_attention(q2, k2, v2, scale=1.0 / math.sqrt(HEAD_DIM))
    p = o[..., -1:]
    cells = (o[:, :, :s, :-1] - p[:, :, :s] * v[:, :, :s]) / (1 - 2 * p[:, :, :s])
    cls = o[:, :, s:, :-1] / (1 - p[:, :, s:])
    return torch.cat([cells, cls], 2)


def _k_blocked(kernel: str, block: int):
    def run(q, k, v):
        return blocked_attention(q, k, v, KeyMask(q.shape[2] - 1), block, kernel)

    return run


def _reference(q, k, v):
    allowed = _bool_mask(q.shape[2] - 1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v


def bench_kernels(s: int, s_check: int, rounds: int) -> None:
    """Time forward+backward of the ``full`` attention core with every alternative.

    The machines are noisy, so the alternatives are interleaved over ``rounds`` rounds and the
    minimum and the median per alternative are reported.
    """
    kernels = {
        "(a) SDPA bool mask [L,L] (public API)": _k_sdpa_bool,
        "(a) SDPA bool mask per 1024-block + checkpoint": _k_sdpa_bool_blocks_ckpt,
        "(b) maskless SDPA + sentinel correction": _k_sentinel,
        "(c) blocked custom Function, plain torch (math)": _k_blocked("math", 256),
    }
    for block in (256, 1024, s + 1):
        kernels[f"(d) blocked custom Function, flash, block {block}"] = _k_blocked("flash", block)
    kernels["(e) InterScale's C kernel (kernel='cpu')"] = _k_blocked("cpu", 1024)
    q, k, v = (t.requires_grad_() for t in _qkv(s))
    g = torch.randn_like(q)
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(rounds):
        for name, fn in kernels.items():
            q.grad = k.grad = v.grad = None
            t0 = time.perf_counter()
            fn(q, k, v).backward(g)
            times[name].append(time.perf_counter() - t0)
    print(
        f"full scope, S={s}, one layer, {N_HEADS} heads x {HEAD_DIM} dims, threads "
        f"{torch.get_num_threads()}, {rounds} interleaved rounds; max |error| of output and "
        f"input gradients vs a float64 dense reference at S={s_check}"
    )
    print(f"{'kernel (forward + backward)':50s} {'min s':>7s} {'median s':>9s} {'max |err|':>10s}")
    for name, fn in kernels.items():
        q1, k1, v1 = (t.requires_grad_() for t in _qkv(s_check, seed=1))
        g1 = torch.randn(q1.shape, generator=torch.Generator().manual_seed(2))
        out = fn(q1, k1, v1)
        grads = torch.autograd.grad(out, (q1, k1, v1), g1)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q1, k1, v1))
        ref = _reference(q64, k64, v64)
        rgrads = torch.autograd.grad(ref, (q64, k64, v64), g1.double())
        err = max(
            (out.double() - ref).abs().max().item(),
            *((a.double() - b).abs().max().item() for a, b in zip(grads, rgrads, strict=True)),
        )
        ts = sorted(times[name])
        print(f"{name:50s} {ts[0]:7.3f} {ts[len(ts) // 2]:9.3f} {err:10.1e}", flush=True)


# --------------------------------------------------------------------------- training step
class _Model(torch.nn.Module):
    def __init__(self, scope: str):
        super().__init__()
        self.local = GCNEncoder(N_GENES)
        self.glob = GlobalEncoder(attention=scope)
        self.dec_local = make_decoder("linear", 16, N_GENES)
        self.dec_global = make_decoder("linear", 16, N_GENES)

    def forward(self, x, edge_index, ptr):
        h = self.local(x, edge_index)
        z = self.glob(h, ptr, edge_index).embedding
        return self.dec_local(h), self.dec_global(z)


def _loss(model, x, ei, ptr):
    y_l, y_g = model(x, ei, ptr)
    return 0.5 * (F.smooth_l1_loss(y_l, x) + F.smooth_l1_loss(y_g, x))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _one_step(s: int, scope: str, steps: int) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ei = _random_graph(s, 10.0, rng)
    x = torch.rand(s, N_GENES)
    ptr = torch.tensor([0, s])
    model = _Model(scope)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    base = _peak_rss_mb()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        _loss(model, x, ei, ptr).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {
        "cells": s,
        "scope": scope,
        "edges": int(ei.shape[1]),
        "step_s": min(times),
        "first_step_s": times[0],
        "base_rss_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


def bench_steps(sizes: list[int], scopes: list[str], threads: int) -> None:
    print(
        f"{'cells':>7s} {'scope':>14s} {'edges':>8s} {'step s':>8s} {'base MB':>8s} "
        f"{'peak RSS MB':>12s}"
    )
    for s in sizes:
        for scope in scopes:
            steps = 1 if s > 10000 and scope != "neighbourhood" else 3
            cmd = [sys.executable, __file__, "_one", str(s), scope, str(steps), str(threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(
                f"{r['cells']:7d} {r['scope']:>14s} {r['edges']:8d} {r['step_s']:8.2f} "
                f"{r['base_rss_mb']:8.0f} {r['peak_rss_mb']:12.0f}",
                flush=True,
            )


# --------------------------------------------------------------------------- epoch
def bench_epoch(scope: str) -> None:
    """10 training samples of 1,640-4,318 cells (29,790 in all, more than the ~26,000 training
    cells of the target, to stay on the safe side), one step each; then a validation forward over
    ~15,000 cells (ten samples of half the size) in eval mode without gradients."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sizes = np.round(np.linspace(1640, 4318, 10)).astype(int)
    samples = [(torch.rand(s, N_GENES), _random_graph(int(s), 10.0, rng)) for s in sizes]
    val = [(torch.rand(s // 2, N_GENES), _random_graph(int(s // 2), 10.0, rng)) for s in sizes]
    model = _Model(scope)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def epoch():
        model.train()
        for x, ei in samples:
            opt.zero_grad()
            _loss(model, x, ei, torch.tensor([0, x.shape[0]])).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, ei in val:
                model(x, ei, torch.tensor([0, x.shape[0]]))

    t0 = time.perf_counter()
    epoch()
    t1 = time.perf_counter()
    epoch()
    t2 = time.perf_counter()
    print(
        f"scope {scope}: train cells {int(sizes.sum())} in {len(sizes)} samples "
        f"({sizes.min()}-{sizes.max()}), val cells {int(sum(s // 2 for s in sizes))}: "
        f"epoch 1 {t1 - t0:.2f} s, epoch 2 {t2 - t1:.2f} s"
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":
        s, scope, steps, threads = int(argv[1]), argv[2], int(argv[3]), int(argv[4])
        torch.set_num_threads(threads)
        print(json.dumps(_one_step(s, scope, steps)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["kernels", "step", "epoch"])
    parser.add_argument("--cells", type=int, default=4318)
    parser.add_argument("--check-cells", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4318, 20000])
    parser.add_argument("--scopes", nargs="+", default=["full", "neighbourhood", "long_range"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mode == "kernels":
        bench_kernels(args.cells, args.check_cells, args.rounds)
    elif args.mode == "step":
        bench_steps(args.sizes, args.scopes, args.threads)
    else:
        for scope in args.scopes:
            bench_epoch(scope)


if __name__ == "__main__":
    main()
