"""Attention kernels for the global encoder: blocked exact softmax attention and edge attention.

Conventions
-----------
* One sample is processed as one sequence of length ``L = S + 1``: its ``S`` cells in batch order,
  followed by the sample's CLS token at position ``S``.
* ``edge_index`` follows PyTorch Geometric: row 0 holds the source ``j``, row 1 the target ``i``;
  an edge ``j -> i`` means that cell ``i`` attends to (``neighbourhood``) or ignores
  (``long_range``) cell ``j``.  The spatial graph is symmetric, so the direction rarely matters.
* Scopes for a cell query: ``full`` = CLS + every other cell of its sample (not itself);
  ``neighbourhood`` = CLS + its neighbours; ``long_range`` = CLS + every cell that is neither
  itself nor a neighbour.  The CLS query attends to every cell of its sample and to itself.

Kernels
-------
On the CPU, ``full`` and ``long_range`` run InterScale's own C kernel (``kernel="cpu"``,
:mod:`interscale.nn._cpu_kernel`: one pass per query row over contiguous keys, the excluded keys
cleared in the row's score buffer, about twice as fast as the fused flash kernel at head
dimension 4), built on first use; ``kernel="auto"`` falls back to the blocked flash kernel below,
with a warning that says why, where no C compiler works, and for float64.

``kernel="flash"`` and ``kernel="math"`` use :class:`_BlockedAttention`, a custom autograd
function that walks over blocks of query rows.  For each block it builds an additive key mask
(``0`` / ``-inf``, ``[block, L]``) and calls PyTorch's fused CPU flash-attention kernel, which
returns the output and the row log-sum-exp.  Only the output and the log-sum-exp are kept for the
backward pass; the masks are rebuilt block by block there (in one reused buffer).  Peak memory is
therefore ``O(block * L)`` rather than ``O(L^2)``, and the per-block mask costs little next to the
exponentials (measured in ``scripts/bench_attention.py``).  Where the fused kernel is unavailable
(other devices or dtypes, older PyTorch) the same blocked algorithm runs with plain tensor
operations (``kernel="math"``).  On CUDA, ``kernel="auto"`` runs ``full`` and ``long_range``
with FlexAttention over all samples packed in one sequence instead (:mod:`interscale.nn._flex`),
except under deterministic algorithms; ``kernel="flex"`` forces that path on any device.

``neighbourhood`` uses an edge softmax over the edge list plus the CLS key: ``O(edges)`` memory,
no per-sample loop.

Dropout is not applied to the attention probabilities, unlike ``torch.nn.MultiheadAttention`` in
the published model: the fused kernel would draw its own random numbers, and a dropout mask on the
probabilities is an ``S x S`` object.  The encoder layer's dropout on the attention output (the
residual branch) stays, so training remains regularised and, given a seed, bit-reproducible.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from interscale.names import ATTENTION_KERNELS, ATTENTION_SCOPES
from interscale.nn._cpu_kernel import cpu_attention, cpu_kernel_available, warn_unavailable_once
from interscale.nn._masks import KeyMask, dense_scope_mask

__all__ = [
    "ATTENTION_SCOPES",
    "AttentionWeights",
    "KeyMask",
    "blocked_attention",
    "dense_scope_mask",
    "edge_attention",
    "flash_kernel_available",
]

# Every kernel name GlobalEncoder accepts; "flex" (packed FlexAttention) lives in ``_flex.py``.
_KERNELS = ATTENTION_KERNELS
_BLOCKED_KERNELS = ("auto", "cpu", "flash", "math")
# Upper bound on the number of score entries materialised at once when attention weights are
# requested (heads x rows x keys); 2**20 float32 values are 4 MiB. Chunks this small stay in
# cache and reuse the allocator's memory: 64 MiB chunks made get_model_output 4x slower.
_WEIGHTS_CHUNK_ELEMENTS = 2**20


class AttentionWeights(NamedTuple):
    """Sparse head-averaged attention weights between cells, top-k per query row.

    Attributes
    ----------
    rows
        Query cell indices (global indices 0..N-1 of the batch), LongTensor ``[nnz]``.
    cols
        Key cell indices (global, same sample as the row), LongTensor ``[nnz]``.
    values
        Head-averaged attention weights, ``[nnz]``; the CLS column is not included, so a row sums
        to at most one.
    """

    rows: Tensor
    cols: Tensor
    values: Tensor

    def to_sparse_coo(self, n: int) -> Tensor:
        """Return the weights as a coalesced ``n x n`` torch sparse COO tensor.

        Parameters
        ----------
        n
            Number of cells of the batch.

        Returns
        -------
        Tensor
            Sparse COO tensor with the weights at ``(rows, cols)``.
        """
        idx = torch.stack([self.rows, self.cols])
        return torch.sparse_coo_tensor(idx, self.values, (n, n), check_invariants=True).coalesce()


def _flash_ops():
    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    return fwd, bwd


def _flash_supports_masks() -> bool:
    # The fused CPU kernel gained ``attn_mask`` after it first appeared (PyTorch 2.2 lacks it).
    fwd, bwd = _flash_ops()
    try:
        return all("attn_mask" in str(op.default._schema) for op in (fwd, bwd))
    except (AttributeError, RuntimeError):
        return False


_FLASH_WITH_MASKS = _flash_supports_masks()


def flash_kernel_available(tensor: Tensor) -> bool:
    """Tell whether the fused CPU flash-attention kernel can process ``tensor``.

    Parameters
    ----------
    tensor
        A query tensor (only its device and dtype matter).

    Returns
    -------
    bool
        True for float32/float64 CPU tensors when PyTorch ships the kernel with mask support.
    """
    return (
        _FLASH_WITH_MASKS
        and tensor.device.type == "cpu"
        and tensor.dtype in (torch.float32, torch.float64)
    )


def _fwd_flash(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float):
    fwd, _ = _flash_ops()
    return fwd(q, k, v, 0.0, False, attn_mask=mask, scale=scale)


def _bwd_flash(do, q, k, v, o, lse, mask, scale):
    _, bwd = _flash_ops()
    return bwd(do, q, k, v, o, lse, 0.0, False, attn_mask=mask, scale=scale)


def _fwd_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    return torch.matmul(probs, v), lse


def _bwd_math(do, q, k, v, o, lse, mask, scale):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
    probs = torch.exp(scores - lse.unsqueeze(-1))
    dprobs = torch.matmul(do, v.transpose(-1, -2))
    delta = (do * o).sum(dim=-1, keepdim=True)
    dscores = probs * (dprobs - delta)
    dq = torch.matmul(dscores, k) * scale
    dk = torch.matmul(dscores.transpose(-1, -2), q) * scale
    dv = torch.matmul(probs.transpose(-1, -2), do)
    return dq, dk, dv


class _BlockedAttention(torch.autograd.Function):
    """Exact masked softmax attention, blocked over query rows, recomputing masks in backward."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, block_size, use_flash):
        length = q.shape[2]
        scale = 1.0 / math.sqrt(q.shape[-1])
        fwd = _fwd_flash if use_flash else _fwd_math
        outs, lses = [], []
        for start, stop, mask in key_mask.iter_blocks(length, block_size, q.dtype, q.device):
            o, lse = fwd(q[:, :, start:stop], k, v, mask, scale)
            outs.append(o)
            lses.append(lse)
        out = torch.cat(outs, dim=2)
        lse = torch.cat(lses, dim=2)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.key_mask = key_mask
        ctx.block_size = block_size
        ctx.use_flash = use_flash
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        bwd = _bwd_flash if ctx.use_flash else _bwd_math
        length = q.shape[2]
        dq_blocks = []
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        blocks = ctx.key_mask.iter_blocks(length, ctx.block_size, q.dtype, q.device)
        for start, stop, mask in blocks:
            rows = slice(start, stop)
            dq_b, dk_b, dv_b = bwd(
                grad_out[:, :, rows].contiguous(),
                q[:, :, rows],
                k,
                v,
                out[:, :, rows],
                lse[:, :, rows],
                mask,
                ctx.scale,
            )
            dq_blocks.append(dq_b)
            dk.add_(dk_b)
            dv.add_(dv_b)
        return torch.cat(dq_blocks, dim=2), dk, dv, None, None, None


def blocked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: KeyMask,
    block_size: int = 1024,
    kernel: str = "auto",
) -> Tensor:
    """Exact softmax attention of one sample under ``key_mask``, in blocks of query rows.

    Parameters
    ----------
    q, k, v
        ``[1, H, L, d]`` queries, keys and values of the sequence (cells, then CLS).
    key_mask
        Which keys each query row may use.
    block_size
        Query rows per block; memory per block is ``O(block_size * L)``.
    kernel
        ``"cpu"`` (InterScale's C kernel, float32 on the CPU), ``"flash"`` (PyTorch's fused CPU
        kernel, blocked), ``"math"`` (plain tensor operations, blocked) or ``"auto"`` (``"cpu"``
        for float32 CPU tensors when the kernel builds, else flash where available).
        bfloat16 / float16 inputs are computed in float32 (mixed precision keeps the softmax
        statistics in float32) and returned in their own dtype.

    Returns
    -------
    Tensor
        ``[1, H, L, d]`` attention output (differentiable w.r.t. ``q``, ``k`` and ``v``).

    Raises
    ------
    ValueError
        If ``kernel`` is unknown, ``block_size`` is not positive, or ``kernel="flash"`` or
        ``kernel="cpu"`` is asked for a tensor that the kernel cannot process (or, for
        ``"cpu"``, the kernel did not build: the message says why).
    """
    if kernel not in _BLOCKED_KERNELS:
        raise ValueError(f"kernel must be one of {_BLOCKED_KERNELS}, got {kernel!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if q.dtype in (torch.bfloat16, torch.float16):
        # Mixed precision: the softmax statistics (row max, log-sum-exp) and the accumulation
        # run in float32, as the fused kernel needs; the output goes back to the input dtype.
        with torch.autocast(q.device.type, enabled=False):
            out = blocked_attention(q.float(), k.float(), v.float(), key_mask, block_size, kernel)
        return out.to(q.dtype)
    if kernel == "cpu":
        return cpu_attention(q, k, v, key_mask)
    if kernel == "auto" and q.device.type == "cpu" and q.dtype == torch.float32:
        if cpu_kernel_available(q):
            return cpu_attention(q, k, v, key_mask)
        warn_unavailable_once()
    available = flash_kernel_available(q)
    if kernel == "flash" and not available:
        raise ValueError(
            f"kernel='flash' needs float32/float64 CPU tensors and PyTorch's fused CPU kernel; "
            f"got {q.dtype} on {q.device}"
        )
    use_flash = available if kernel == "auto" else kernel == "flash"
    return _BlockedAttention.apply(q, k, v, key_mask, int(block_size), use_flash)


def _segment_softmax(scores: Tensor, index: Tensor, n_groups: int) -> Tensor:
    """Softmax of ``scores`` [M, H] within groups given by ``index`` [M] (deterministic on CPU)."""
    idx = index.unsqueeze(-1).expand_as(scores)
    # The maximum only stabilises the exponentials; it carries no gradient mathematically.
    gmax = torch.full(
        (n_groups, scores.shape[1]), float("-inf"), dtype=scores.dtype, device=scores.device
    )
    gmax = gmax.scatter_reduce(0, idx, scores.detach(), reduce="amax", include_self=True)
    ex = torch.exp(scores - gmax.index_select(0, index))
    denom = torch.zeros_like(gmax).index_add(0, index, ex)
    return ex / denom.index_select(0, index)


def edge_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_cls: Tensor,
    k_cls: Tensor,
    v_cls: Tensor,
    batch: Tensor,
    edge_index: Tensor,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``neighbourhood`` attention over a whole batch with an edge softmax.

    Parameters
    ----------
    q, k, v
        ``[N, H, d]`` cell queries, keys and values.
    q_cls, k_cls, v_cls
        ``[B, H, d]`` CLS queries, keys and values, one per sample.
    batch
        ``[N]`` sample index of every cell.
    edge_index
        ``[2, M]`` edges ``j -> i`` (row 0 source, row 1 target); cell ``i`` attends to ``j``.
    need_weights
        Also return the per-edge attention (``[M, H]``) and the CLS query's attention to each
        cell (``[N, H]``).

    Returns
    -------
    tuple
        ``(out_cells [N, H, d], out_cls [B, H, d], edge_weights or None, cls_weights or None)``.
    """
    n, n_heads, d = q.shape
    n_samples = q_cls.shape[0]
    scale = 1.0 / math.sqrt(d)
    src, dst = edge_index[0], edge_index[1]
    arange_n = torch.arange(n, device=q.device)

    # cell queries: neighbours (one score per edge) and the own sample's CLS
    s_edge = (q.index_select(0, dst) * k.index_select(0, src)).sum(-1) * scale
    s_cls = (q * k_cls.index_select(0, batch)).sum(-1) * scale
    alpha = _segment_softmax(torch.cat([s_edge, s_cls]), torch.cat([dst, arange_n]), n)
    a_edge, a_cls = alpha[: src.numel()], alpha[src.numel() :]
    out = torch.zeros_like(q).index_add(0, dst, a_edge.unsqueeze(-1) * v.index_select(0, src))
    out = out + a_cls.unsqueeze(-1) * v_cls.index_select(0, batch)

    # CLS queries: every cell of the sample and the CLS token itself
    arange_b = torch.arange(n_samples, device=q.device)
    c_cells = (q_cls.index_select(0, batch) * k).sum(-1) * scale
    c_self = (q_cls * k_cls).sum(-1) * scale
    beta = _segment_softmax(torch.cat([c_cells, c_self]), torch.cat([batch, arange_b]), n_samples)
    b_cells, b_self = beta[:n], beta[n:]
    out_cls = torch.zeros_like(q_cls).index_add(0, batch, b_cells.unsqueeze(-1) * v)
    out_cls = out_cls + b_self.unsqueeze(-1) * v_cls

    if need_weights:
        return out, out_cls, a_edge, b_cells
    return out, out_cls, None, None


def topk_per_row(
    rows: Tensor, cols: Tensor, values: Tensor, n_rows: int, k: int
) -> AttentionWeights:
    """Keep the ``k`` largest positive values of every row of a sparse (COO) matrix.

    Parameters
    ----------
    rows, cols, values
        COO entries (any order).
    n_rows
        Number of rows (rows are ``0..n_rows-1``).
    k
        Entries kept per row.

    Returns
    -------
    AttentionWeights
        Entries sorted by row, then by decreasing value (ties: original order).
    """
    keep = values > 0
    rows, cols, values = rows[keep], cols[keep], values[keep]
    order = torch.argsort(values, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, cols, values = rows[order], cols[order], values[order]
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(rows.numel(), device=rows.device) - starts.index_select(0, rows)
    keep = rank < k
    return AttentionWeights(rows[keep], cols[keep], values[keep])


def blocked_attention_weights(
    q: Tensor, k: Tensor, key_mask: KeyMask, top_k: int, offset: int
) -> tuple[AttentionWeights, Tensor]:
    """Head-averaged attention weights of one sample, top-k per cell row, computed in row blocks.

    Parameters
    ----------
    q, k
        ``[1, H, L, d]`` queries and keys (cells, then CLS).
    key_mask
        Scope of the sample.
    top_k
        Entries kept per cell row (the CLS column is excluded before selecting).
    offset
        Global index of the sample's first cell.

    Returns
    -------
    tuple
        ``(AttentionWeights with global indices, cls_weights [S])`` where ``cls_weights`` is the
        head-averaged attention of the CLS query to each cell.
    """
    n_heads, length = q.shape[1], q.shape[2]
    s = length - 1
    scale = 1.0 / math.sqrt(q.shape[-1])
    rows_per_chunk = max(1, _WEIGHTS_CHUNK_ELEMENTS // (n_heads * length))
    kk = min(top_k, s)
    all_rows, all_cols, all_vals = [], [], []
    cls_weights = q.new_zeros(s)
    for start in range(0, length, rows_per_chunk):
        stop = min(start + rows_per_chunk, length)
        mask = key_mask.block(start, stop, q.dtype, q.device)
        scores = torch.matmul(q[:, :, start:stop], k.transpose(-1, -2))[0] * scale + mask
        probs = torch.softmax(scores, dim=-1).mean(dim=0)  # [rows, L]
        if stop == length:
            cls_weights = probs[-1, :s].clone()
            probs = probs[:-1]
        if probs.shape[0] == 0 or kk == 0:
            continue
        vals, idx = torch.topk(probs[:, :s], kk, dim=1)
        row_ids = torch.arange(start, start + probs.shape[0], device=q.device)
        row_ids = row_ids.unsqueeze(1).expand_as(idx)
        keep = vals > 0
        all_rows.append(row_ids[keep] + offset)
        all_cols.append(idx[keep] + offset)
        all_vals.append(vals[keep])
    if all_rows:
        weights = AttentionWeights(torch.cat(all_rows), torch.cat(all_cols), torch.cat(all_vals))
    else:
        empty = torch.zeros(0, dtype=torch.long, device=q.device)
        weights = AttentionWeights(empty, empty.clone(), q.new_zeros(0))
    return weights, cls_weights
