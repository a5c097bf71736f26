"""FlexAttention path of the ``full`` and ``long_range`` scopes: all samples packed in one sequence.

Layout
------
The tokens of a step (``N`` cells, then ``B`` CLS tokens, as :class:`GlobalEncoder` holds them) are
reordered into ONE sequence: the cells of sample 0, its CLS, the cells of sample 1, its CLS, ...
Sample ``b`` therefore occupies the positions ``ptr[b] + b .. ptr[b + 1] + b`` (CLS last, as in the
per-sample sequences of :mod:`interscale.nn._attention`).  The sequence is padded with zero
tokens up to a bucketed length (:func:`bucket_length`) so that a compiled kernel is reused across
steps whose sizes differ a little.  Every position carries a sample ("document") id; padding
positions form one extra document of their own and behave like CLS tokens (they see every
padding position, themselves included), so no query row is ever empty and nothing real sees them.

Mask
----
``mask_mod(b, h, q, kv)`` allows ``kv`` for ``q`` when both belong to the same sample, and ``q`` is
a CLS (or padding) position or ``kv != q``; for ``long_range`` it also refuses the graph
neighbours of a cell query.  Those come from a per-position neighbour table ``[L, K]`` (packed key
positions, ``-1`` where a cell has fewer than ``K`` neighbours; ``K`` = largest in-degree rounded
up to a multiple of 8 for reuse of compiled kernels); the mask_mod compares ``kv`` to the ``K``
entries of row ``q`` (unrolled, ``K`` loads per evaluated element: the table is dense-free,
``O(L * K)``).  This is the mask of :func:`interscale.nn._masks.dense_scope_mask` sample by sample.

Kernels
-------
On CUDA the fused kernel (``torch.compile(flex_attention)``, compiled once per bucket and grad
mode under a recompile limit of its own, with a loud eager fallback: :mod:`._flex_compile`)
computes forward and backward; the block mask is built once per forward from the
sample ranges (:meth:`PackedLayout.block_lists`: no ``L x L`` evaluation) and shared by every
layer and head.  Tiles joining two samples are skipped, so the work is ``sum_b S_b^2`` rounded to
128 x 128 tiles; under ``full`` the off-diagonal tiles inside a sample skip the mask_mod, under
``long_range`` every tile of a sample is partial (``K`` table loads per score).  The tile lists are
dense ``[L / 128, L / 128]`` (at 1,000,000 cells about 61 M entries: 0.25 GB of int32 indices,
plus a transient argsort).  ``auto`` leaves this path under deterministic algorithms
(:func:`resolve_kernel`): bit-reproducibility of the fused backward (its ``dQ`` write order) is
not established here, while the blocked path is bit-reproducible; so a reproduction under
:func:`interscale.tl.set_full_reproducibility` runs the blocked ``math`` kernel on CUDA
(:func:`interscale.nn.attention_kernel` names the kernel that runs).
On CPU FlexAttention runs eagerly (it materialises the scores: tests and small inputs only) and
has no backward in PyTorch; here the backward is computed sample by sample in row chunks from the
forward's output and log-sum-exp with the same mask (the blocked algorithm's maths).  ``auto``
never chooses this path on CPU; ``kernel="flex"`` forces it.

Head dimension: the fused kernel wants at least 16 dimensions per head; the published model has 4
(``n_embed`` 16 / 4 heads).  Queries, keys and values are padded with zeros to
:data:`MIN_HEAD_DIM` and the softmax scale stays ``1 / sqrt(d)`` of the true ``d``: zero dimensions
add nothing to ``q . k`` and the padded columns of the output are dropped, so results do not
change.  The cost is the padding itself: ``q @ k^T`` and ``p @ v`` run on 16 instead of 4 columns
(4x their FLOPs and 4x the q/k/v/output memory traffic); the exponentials, which bound the kernel
at this width, are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from itertools import pairwise

import torch
from torch import Tensor

from ._attention import AttentionWeights, _bwd_math, blocked_attention_weights
from ._flex_compile import _flex_module, call_compiled, flex_available, quiet_eager

__all__ = [
    "MIN_HEAD_DIM",
    "PackedLayout",
    "bucket_length",
    "flex_attention_packed",
    "flex_attention_weights",
    "flex_available",
    "resolve_kernel",
]

#: Head dimension the queries, keys and values are padded to (fused-kernel minimum).
MIN_HEAD_DIM = 16
#: Smallest bucket of packed sequence lengths (the kernel's block size).
BUCKET = 128
# Score entries materialised at once by the CPU backward (heads x rows x keys), 4 MiB in float32.
_CHUNK_ELEMENTS = 2**20


def resolve_kernel(kernel: str, tensor: Tensor, deterministic: bool | None = None) -> str:
    """The attention kernel that ``kernel`` means for ``tensor`` (``"flex"`` or a blocked kernel).

    ``"auto"`` gives ``"flex"`` only on CUDA, when FlexAttention is available and deterministic
    algorithms are off (``torch.are_deterministic_algorithms_enabled()``; under
    :func:`interscale.tl.set_full_reproducibility` the blocked path, which is bit-reproducible,
    keeps running).  Everywhere else ``"auto"`` stays ``"auto"``: the blocked kernels' own choice,
    so the CPU behaviour is the one without FlexAttention.

    Parameters
    ----------
    kernel
        ``"auto"``, ``"flex"``, ``"cpu"``, ``"flash"`` or ``"math"``.
    tensor
        A query tensor (only its device matters).
    deterministic
        Whether deterministic algorithms are on; None (default) asks torch.

    Returns
    -------
    str
        ``"flex"`` or ``kernel`` unchanged.

    Raises
    ------
    ValueError
        ``kernel="flex"`` without FlexAttention.
    """
    if kernel == "flex":
        if not flex_available():
            raise ValueError("kernel='flex' needs torch.nn.attention.flex_attention (PyTorch 2.5+)")
        return "flex"
    if (
        kernel == "auto"
        and tensor.device.type == "cuda"
        and flex_available()
        and not (
            torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic
        )
    ):
        return "flex"
    return kernel


def bucket_length(length: int) -> int:
    """Round a packed sequence length up to its bucket (one compiled kernel per bucket).

    Buckets are multiples of ``max(128, 2 ** (floor(log2(length - 1)) - 2))``, i.e. 4 per doubling
    of the length (``1024, 1280, 1536, 1792, 2048, 2560, ...``): padding stays under 25 % above
    512 positions (under 128 positions below), and the main dataset's single samples (1,640-4,318
    cells, 1,641-4,319 positions with the CLS token) fall into 7 buckets, 14 compiled graphs with
    training and evaluation, within :data:`interscale.nn._flex_compile.RECOMPILE_LIMIT`.  Padding
    positions form a document of their own, so they cost ``pad^2`` scores, not ``length * pad``.

    Parameters
    ----------
    length
        Number of real positions (cells + CLS tokens).

    Returns
    -------
    int
        Padded length, ``>= length``, a multiple of 128.

    Raises
    ------
    ValueError
        If ``length`` is not positive.
    """
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    step = max(BUCKET, 2 ** max(0, (length - 1).bit_length() - 3))
    return -(-length // step) * step


def _make_mask_mod(doc: Tensor, is_cls: Tensor, nbr: Tensor | None) -> Callable:
    """The mask_mod of a packed layout (module-level factory: one code object, no recompiles)."""
    n_nbr = 0 if nbr is None else nbr.shape[1]

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = (doc[q_idx] == doc[kv_idx]) & ((q_idx != kv_idx) | is_cls[q_idx])
        for j in range(n_nbr):
            allowed = allowed & (nbr[q_idx, j] != kv_idx)
        return allowed

    return mask_mod


class PackedLayout:
    """All samples of a step in one sequence: positions, documents and the attention mask.

    Parameters
    ----------
    ptr
        ``[B + 1]`` sample boundaries of the cells (PyG ``Batch.ptr``).
    edge_index
        ``[2, M]`` global edges ``j -> i`` whose sources cell ``i`` ignores (``long_range``), or
        None (``full``).
    bucket
        Pad the sequence to :func:`bucket_length` (default) or not (exact length).

    Attributes
    ----------
    length
        Real positions ``N + B``.
    padded_length
        Positions after padding.
    token_of_pos
        ``[length]`` index of each packed position into the token order ``[cells; CLS]``.
    pos_of_token
        ``[N + B]`` inverse of ``token_of_pos``.
    starts
        Python list ``[B + 1]``: first packed position of each sample (its CLS is at
        ``starts[b + 1] - 1``).
    doc, is_cls, nbr
        Per-position sample id (``B`` for padding), CLS-or-padding flag and neighbour table
        (None for ``full``).
    """

    def __init__(self, ptr: Tensor, edge_index: Tensor | None = None, bucket: bool = True) -> None:
        device = ptr.device
        bounds = [int(x) for x in ptr.tolist()]
        n_samples = len(bounds) - 1
        n = bounds[-1]
        self.n_cells = n
        self.n_samples = n_samples
        self.length = n + n_samples
        self.padded_length = bucket_length(self.length) if bucket else self.length
        self.starts = [a + b for b, a in enumerate(bounds)]
        sizes = ptr[1:] - ptr[:-1]
        batch = torch.repeat_interleave(torch.arange(n_samples, device=device), sizes)
        cell_pos = torch.arange(n, device=device) + batch
        cls_pos = ptr[1:] + torch.arange(n_samples, device=device)
        self.pos_of_token = torch.cat([cell_pos, cls_pos])
        self.token_of_pos = torch.empty_like(self.pos_of_token)
        self.token_of_pos[self.pos_of_token] = torch.arange(self.length, device=device)
        self.doc = torch.full((self.padded_length,), n_samples, dtype=torch.long, device=device)
        self.doc[cell_pos] = batch
        self.doc[cls_pos] = torch.arange(n_samples, device=device)
        self.is_cls = torch.ones(self.padded_length, dtype=torch.bool, device=device)
        self.is_cls[cell_pos] = False
        self.nbr = None if edge_index is None else self._neighbour_table(edge_index, cell_pos)
        self.mask_mod = _make_mask_mod(self.doc, self.is_cls, self.nbr)
        self._block_mask = None

    def _neighbour_table(self, edge_index: Tensor, cell_pos: Tensor) -> Tensor:
        device = cell_pos.device
        src = cell_pos[edge_index[0]]
        dst = cell_pos[edge_index[1]]
        order = torch.argsort(dst, stable=True)
        src, dst = src[order], dst[order]
        counts = torch.bincount(dst, minlength=self.padded_length)
        width = -(-int(counts.max()) // 8) * 8 if dst.numel() else 0
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(dst.numel(), device=device) - starts[dst]
        table = torch.full((self.padded_length, width), -1, dtype=torch.long, device=device)
        table[dst, rank] = src
        return table

    def dense_rows(self, rows: Tensor, cols: Tensor) -> Tensor:
        """The mask_mod evaluated on a grid: ``[len(rows), len(cols)]`` booleans (True = attend).

        Parameters
        ----------
        rows, cols
            Packed query and key positions (LongTensors).

        Returns
        -------
        Tensor
            Boolean matrix.
        """
        return self.mask_mod(None, None, rows.unsqueeze(1), cols.unsqueeze(0))

    def block_lists(self, block: int = BUCKET) -> tuple[Tensor, Tensor]:
        """Partial and full ``block x block`` tiles of the mask, from the sample ranges alone.

        Positions are sorted by document, so the key tiles that share a document with a query
        tile form one contiguous range.  A tile pair whose two tiles lie inside one and the same
        sample (padding excluded) and off the diagonal is full under ``full`` (the only refused
        pairs, ``q == kv`` of a cell, lie on diagonal tiles); every other overlapping pair, and
        all of them under ``long_range``, is partial (the mask_mod runs there).  Cost:
        ``O((L / block)^2)`` small integers instead of ``L^2`` mask_mod evaluations.

        Parameters
        ----------
        block
            Tile size (FlexAttention's default 128).

        Returns
        -------
        tuple
            ``(partial, full)`` boolean ``[n_blocks, n_blocks]`` (query tile, key tile).
        """
        length = self.padded_length
        first = self.doc[::block].contiguous()
        tiles = torch.arange(first.numel(), device=first.device)
        last = self.doc[torch.clamp((tiles + 1) * block - 1, max=length - 1)]
        lo = torch.searchsorted(last, first, side="left")
        hi = torch.searchsorted(first, last, side="right") - 1
        overlap = (tiles >= lo.unsqueeze(1)) & (tiles <= hi.unsqueeze(1))
        full = torch.zeros_like(overlap)
        if self.nbr is None:
            single = (first == last) & (first < self.n_samples)
            same = single.unsqueeze(1) & single.unsqueeze(0) & (first.unsqueeze(1) == first)
            full = same & (tiles.unsqueeze(1) != tiles)
        return overlap & ~full, full

    def block_mask(self, device: torch.device):
        """The FlexAttention ``BlockMask`` of the layout (built once, shared by layers and heads).

        Built from :meth:`block_lists` (no ``L x L`` evaluation of the mask_mod).

        Parameters
        ----------
        device
            Device of the attention tensors.

        Returns
        -------
        torch.nn.attention.flex_attention.BlockMask
            Block mask over ``padded_length x padded_length``.
        """
        if self._block_mask is None:
            partial, full = self.block_lists()

            def as_lists(tiles: Tensor) -> tuple[Tensor, Tensor]:
                counts = tiles.sum(1, dtype=torch.int32)
                order = torch.argsort((~tiles).to(torch.uint8), dim=1, stable=True)
                return counts[None, None].to(device), order.to(torch.int32)[None, None].to(device)

            length = self.padded_length
            self._block_mask = _flex_module().BlockMask.from_kv_blocks(
                *as_lists(partial), *as_lists(full), BLOCK_SIZE=BUCKET, mask_mod=self.mask_mod,
                seq_lengths=(length, length),
            )  # fmt: skip
        return self._block_mask

    def pack(self, x: Tensor) -> Tensor:
        """Reorder ``[N + B, ...]`` tokens into packed positions, zero-padded to the bucket.

        Parameters
        ----------
        x
            Tokens in the order ``[cells; CLS]``.

        Returns
        -------
        Tensor
            ``[padded_length, ...]``.
        """
        packed = x.index_select(0, self.token_of_pos)
        pad = self.padded_length - self.length
        if pad:
            packed = torch.cat([packed, packed.new_zeros((pad, *x.shape[1:]))])
        return packed

    def unpack(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`pack`: ``[padded_length, ...]`` back to ``[N + B, ...]`` tokens."""
        return x.index_select(0, self.pos_of_token)


class _SampleMask:
    """The packed mask of one sample in the ``KeyMask.block`` interface (positions local to it)."""

    def __init__(self, layout: PackedLayout, start: int, stop: int) -> None:
        self.layout = layout
        self.start = start
        self.cols = torch.arange(start, stop, device=layout.doc.device)

    def block(self, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        rows = self.cols[start:stop]
        allowed = self.layout.dense_rows(rows, self.cols)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return mask.masked_fill_(~allowed.to(device), float("-inf"))


def _pad_head_dim(x: Tensor, dim: int) -> Tensor:
    return x if x.shape[-1] >= dim else torch.nn.functional.pad(x, (0, dim - x.shape[-1]))


@cache
def _compiled_flex():
    return torch.compile(_flex_module().flex_attention, dynamic=False)


def _flex_call(q, k, v, layout: PackedLayout, scale: float, lse: bool, compiled=None):
    """One FlexAttention call: compiled (default on CUDA; loud eager fallback) or eager, quietly."""
    flex = _flex_module()
    aux = flex.AuxRequest(lse=True) if lse else None
    kwargs = {"block_mask": layout.block_mask(q.device), "scale": scale, "return_aux": aux}
    if q.device.type == "cuda" if compiled is None else compiled:
        return call_compiled(_compiled_flex(), flex.flex_attention, q, k, v, **kwargs)
    return quiet_eager(q, k, v, **kwargs)


class _FlexCPU(torch.autograd.Function):
    """Eager FlexAttention forward; backward per sample in row chunks (CPU has no flex backward)."""

    @staticmethod
    def forward(ctx, q, k, v, layout, scale):
        out, aux = _flex_call(q.detach(), k.detach(), v.detach(), layout, scale, lse=True)
        lse = aux.lse
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout = layout
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        layout, scale = ctx.layout, ctx.scale
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        n_heads = q.shape[1]
        for a, z in pairwise(layout.starts):
            sample = _SampleMask(layout, a, z)
            keys = slice(a, z)
            rows_per_chunk = max(1, _CHUNK_ELEMENTS // (n_heads * (z - a)))
            for r0 in range(0, z - a, rows_per_chunk):
                r1 = min(r0 + rows_per_chunk, z - a)
                rows = slice(a + r0, a + r1)
                dq_c, dk_c, dv_c = _bwd_math(
                    grad_out[:, :, rows], q[:, :, rows], k[:, :, keys], v[:, :, keys],
                    out[:, :, rows], lse[:, :, rows], sample.block(r0, r1, q.dtype, q.device),
                    scale,
                )  # fmt: skip
                dq[:, :, rows] = dq_c
                dk[:, :, keys] += dk_c
                dv[:, :, keys] += dv_c
        return dq, dk, dv, None, None


def flex_attention_packed(
    q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, min_head_dim: int = MIN_HEAD_DIM
) -> Tensor:
    """Masked softmax attention of every sample of a step at once, with FlexAttention.

    Parameters
    ----------
    q, k, v
        ``[1, H, padded_length, d]`` packed queries, keys and values (:meth:`PackedLayout.pack`).
    layout
        The packed layout and its mask.
    min_head_dim
        Pad the head dimension with zeros up to this (results unchanged; see the module notes).

    Returns
    -------
    Tensor
        ``[1, H, padded_length, d]`` attention output, differentiable w.r.t. ``q``, ``k``, ``v``
        (on CPU through the chunked backward of this module).
    """
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    q, k, v = (_pad_head_dim(t, min_head_dim) for t in (q, k, v))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if q.device.type == "cpu" and needs_grad:
        out = _FlexCPU.apply(q, k, v, layout, scale)
    elif q.device.type == "cpu":  # no gradient wanted: leaves requiring one must not reach flex
        out = _flex_call(q.detach(), k.detach(), v.detach(), layout, scale, lse=False)
    else:
        out = _flex_call(q, k, v, layout, scale, lse=False)
    return out[..., :d]


def flex_attention_weights(
    q: Tensor, k: Tensor, layout: PackedLayout, top_k: int
) -> tuple[AttentionWeights, Tensor]:
    """Head-averaged attention weights of every sample under the packed mask, in row chunks.

    The scores of a chunk of query rows are computed densely against the keys of their sample
    only (``O(chunk * S)`` memory) with the mask of :meth:`PackedLayout.dense_rows`, by
    :func:`interscale.nn._attention.blocked_attention_weights`.

    Parameters
    ----------
    q, k
        ``[1, H, padded_length, d]`` packed queries and keys.
    layout
        The packed layout.
    top_k
        Entries kept per cell row (CLS column excluded).

    Returns
    -------
    tuple
        ``(AttentionWeights with global cell indices, cls_weights [N])``.
    """
    weights, cls_weights = [], []
    for b, (a, z) in enumerate(pairwise(layout.starts)):
        w, c = blocked_attention_weights(
            q[:, :, a:z], k[:, :, a:z], _SampleMask(layout, a, z), top_k, a - b
        )
        weights.append(w)
        cls_weights.append(c)
    merged = AttentionWeights(*(torch.cat(t) for t in zip(*weights, strict=True)))
    return merged, torch.cat(cls_weights)
