"""Global component: Transformer encoder over the cells of each sample plus a CLS token."""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple

import torch
from torch import Tensor, nn

from interscale.names import ACTIVATIONS, ATTENTION_SCOPES

from ._attention import (
    _KERNELS,
    AttentionWeights,
    KeyMask,
    blocked_attention,
    blocked_attention_weights,
    edge_attention,
    topk_per_row,
)
from ._flex import PackedLayout, flex_attention_packed, flex_attention_weights, resolve_kernel

__all__ = ["GlobalEncoder", "GlobalEncoderOutput"]

# Feed-forward activation by name: every name of ``interscale.names.ACTIVATIONS`` is the name of
# a function of ``torch.nn.functional``.
_ACTIVATIONS = {name: getattr(nn.functional, name) for name in ACTIVATIONS}


class GlobalEncoderOutput(NamedTuple):
    """Result of :meth:`GlobalEncoder.forward`.

    Attributes
    ----------
    embedding
        ``[N, E]`` cell embeddings after the final LayerNorm.
    cls
        ``[B, E]`` CLS embedding of every sample after the final LayerNorm.
    attention
        Last-layer, head-averaged attention between cells (top-k per row, global indices, CLS
        column excluded) when requested, else None.
    cls_attention
        ``[N]`` last-layer, head-averaged attention that each sample's CLS query pays to each of
        its cells when requested, else None.
    """

    embedding: Tensor
    cls: Tensor
    attention: AttentionWeights | None
    cls_attention: Tensor | None


class _SampleLayout:
    """Per-forward description of the batch: sample boundaries and per-sample key masks."""

    def __init__(self, ptr: Tensor, n: int, scope: str, edge_index: Tensor | None) -> None:
        self.ptr = ptr
        self.bounds = [int(x) for x in ptr.tolist()]
        self.n_samples = len(self.bounds) - 1
        self.scope = scope
        sizes = ptr[1:] - ptr[:-1]
        self.batch = torch.repeat_interleave(torch.arange(self.n_samples, device=ptr.device), sizes)
        self.edge_index = edge_index
        self.masks: list[KeyMask] = []
        if scope == "full":
            self.masks = [KeyMask(b - a) for a, b in pairwise(self.bounds)]
        elif scope == "long_range":
            assert edge_index is not None
            src, dst = edge_index[0], edge_index[1]
            order = torch.argsort(dst, stable=True)
            src, dst = src[order], dst[order]
            # CSR over global targets; each sample slices its own part
            rowptr = torch.zeros(n + 1, dtype=torch.long, device=ptr.device)
            rowptr[1:] = torch.cumsum(torch.bincount(dst, minlength=n), 0)
            for a, b in pairwise(self.bounds):
                local_ptr = rowptr[a : b + 1] - rowptr[a]
                local_src = src[int(rowptr[a]) : int(rowptr[b])] - a
                self.masks.append(KeyMask(b - a, local_ptr, local_src))
        self._packed: PackedLayout | None = None

    def packed(self) -> PackedLayout:
        """All samples in one sequence for FlexAttention (built on first use, shared by layers)."""
        if self._packed is None:
            ei = self.edge_index if self.scope == "long_range" else None
            self._packed = PackedLayout(self.ptr, ei)
        return self._packed


def _validate_inputs(h: Tensor, ptr: Tensor, edge_index: Tensor | None, scope: str, e: int):
    if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[1] != e:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(f"h must have shape [N, {e}] (n_embed={e}), got {shape}")
    n = h.shape[0]
    if not isinstance(ptr, Tensor) or ptr.dim() != 1 or ptr.numel() < 2:
        raise ValueError("ptr must be a 1-D LongTensor [B + 1] with B >= 1 (PyG Batch.ptr)")
    if ptr.dtype != torch.long:
        raise TypeError(f"ptr must be a LongTensor, got dtype {ptr.dtype}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != n or bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(
            f"ptr must start at 0, be non-decreasing and end at N={n}; got first={int(ptr[0])}, "
            f"last={int(ptr[-1])}"
        )
    if scope == "full":
        return
    if edge_index is None:
        raise ValueError(f"attention={scope!r} needs edge_index, got None")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, M], got {tuple(edge_index.shape)}")
    if edge_index.dtype != torch.long:
        raise TypeError(f"edge_index must be a LongTensor, got dtype {edge_index.dtype}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"edge_index holds node indices outside 0..{n - 1}")


class _SelfAttention(nn.Module):
    """Multi-head self-attention with the parameter layout of ``torch.nn.MultiheadAttention``."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"n_embed={embed_dim} must be divisible by n_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        tokens: Tensor,
        layout: _SampleLayout,
        block_size: int,
        kernel: str,
        need_weights: bool,
        top_k: int,
    ) -> tuple[Tensor, AttentionWeights | None, Tensor | None]:
        n_tokens, e = tokens.shape
        n = n_tokens - layout.n_samples
        h, d = self.num_heads, e // self.num_heads
        qkv = nn.functional.linear(tokens, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(n_tokens, 3, h, d)
        weights: AttentionWeights | None = None
        cls_w: Tensor | None = None
        if layout.scope == "neighbourhood":
            q, k, v = qkv[:n].unbind(1)
            qc, kc, vc = qkv[n:].unbind(1)
            out, out_cls, a_edge, b_cells = edge_attention(
                q, k, v, qc, kc, vc, layout.batch, layout.edge_index, need_weights
            )
            attn = torch.cat([out, out_cls]).reshape(n_tokens, e)
            if need_weights:
                ei = layout.edge_index
                weights = topk_per_row(ei[1], ei[0], a_edge.detach().mean(1), n, top_k)
                cls_w = b_cells.detach().mean(1)
        elif resolve_kernel(kernel, qkv) == "flex":
            attn, weights, cls_w = self._flex(qkv, layout, need_weights, top_k)
        else:
            cell_out, cls_out, w_list, c_list = [], [], [], []
            for b, (a, z) in enumerate(pairwise(layout.bounds)):
                # sequence = the sample's cells followed by its CLS token: [1, H, S + 1, d]
                seq = torch.cat([qkv[a:z], qkv[n + b : n + b + 1]]).permute(1, 2, 0, 3)
                q, k, v = seq.unsqueeze(1).unbind(0)
                o = blocked_attention(q, k, v, layout.masks[b], block_size, kernel)
                o = o[0].transpose(0, 1).reshape(z - a + 1, e)
                cell_out.append(o[:-1])
                cls_out.append(o[-1:])
                if need_weights:
                    with torch.no_grad():
                        w, c = blocked_attention_weights(q, k, layout.masks[b], top_k, a)
                    w_list.append(w)
                    c_list.append(c)
            attn = torch.cat(cell_out + cls_out)
            if need_weights:
                weights = AttentionWeights(*(torch.cat(t) for t in zip(*w_list, strict=True)))
                cls_w = torch.cat(c_list)
        return self.out_proj(attn), weights, cls_w

    @staticmethod
    def _flex(
        qkv: Tensor, layout: _SampleLayout, need_weights: bool, top_k: int
    ) -> tuple[Tensor, AttentionWeights | None, Tensor | None]:
        """``full``/``long_range`` attention of all samples at once through FlexAttention."""
        packed = layout.packed()
        n_tokens, _, h, d = qkv.shape
        # [padded_length, 3, H, d] -> three [1, H, padded_length, d]
        q, k, v = (t.unsqueeze(0).contiguous() for t in packed.pack(qkv).permute(1, 2, 0, 3))
        out = flex_attention_packed(q, k, v, packed)
        attn = packed.unpack(out[0].transpose(0, 1).reshape(-1, h * d))
        if not need_weights:
            return attn, None, None
        with torch.no_grad():
            weights, cls_w = flex_attention_weights(q, k, packed, top_k)
        return attn, weights, cls_w


class _EncoderLayer(nn.Module):
    """Transformer encoder layer; parameter names match ``torch.nn.TransformerEncoderLayer``."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        activation: str,
        norm_first: bool,
    ) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _ACTIVATIONS[activation]
        self.norm_first = norm_first

    def _ff(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        x: Tensor,
        layout: _SampleLayout,
        block_size: int,
        kernel: str,
        need_weights: bool,
        top_k: int,
    ):
        if self.norm_first:
            a, w, c = self.self_attn(self.norm1(x), layout, block_size, kernel, need_weights, top_k)
            x = x + self.dropout1(a)
            x = x + self._ff(self.norm2(x))
        else:
            a, w, c = self.self_attn(x, layout, block_size, kernel, need_weights, top_k)
            x = self.norm1(x + self.dropout1(a))
            x = self.norm2(x + self._ff(x))
        return x, w, c


class _Encoder(nn.Module):
    """Stack of layers plus the final LayerNorm (the layout of ``nn.TransformerEncoder``)."""

    def __init__(self, layers: list[_EncoderLayer], d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)


class GlobalEncoder(nn.Module):
    """Transformer encoder over the cells of every sample of a batch, with a CLS token per sample.

    The input is the local embedding ``h`` ``[N, E]`` of a batch whose samples occupy contiguous
    row ranges given by ``ptr``.  Cells of different samples never attend to each other and
    nothing is padded or truncated: every cell of every sample gets an embedding.

    Parameters
    ----------
    n_embed
        Model width ``E`` (= local embedding size).
    n_heads
        Attention heads; must divide ``n_embed``.
    dim_feedforward
        Hidden width of the feed-forward block.
    dropout
        Dropout of the residual branches and the feed-forward block.  Not applied to the attention
        probabilities (see :mod:`interscale.nn._attention`).
    activation
        ``"relu"`` or ``"gelu"``.
    num_layers
        Encoder layers.
    attention
        Scope of the cell queries: ``"full"``, ``"neighbourhood"`` or ``"long_range"``.
    block_size
        Query rows per block of the ``full``/``long_range`` kernels (memory ``O(block * S)``).
    norm_first
        Pre-LayerNorm layers (default).  ``False`` gives post-LN layers, the layout of
        ``torch.nn.TransformerEncoderLayer``'s default, for published checkpoints trained so.
    double_input_norm
        Apply the input LayerNorm twice to the cells (once alone, once together with the CLS
        token), as the published implementation does; default False (once).
    kernel
        ``"auto"`` (FlexAttention over packed samples on CUDA unless deterministic algorithms are
        on; on the CPU InterScale's C kernel, else the fused flash kernel where available),
        ``"cpu"`` (the C kernel), ``"flex"`` (FlexAttention on any device; on CPU eager and for
        checks only), ``"flash"`` or ``"math"`` (blocked kernels).
        Only ``full`` and ``long_range`` use it; see :mod:`interscale.nn._flex`.

    Raises
    ------
    ValueError
        On an unknown scope, activation or kernel, non-positive sizes, or ``n_embed`` not
        divisible by ``n_heads``.
    """

    def __init__(
        self,
        n_embed: int = 16,
        n_heads: int = 4,
        dim_feedforward: int = 256,
        dropout: float = 0.1,
        activation: str = "relu",
        num_layers: int = 2,
        attention: str = "full",
        block_size: int = 1024,
        *,
        norm_first: bool = True,
        double_input_norm: bool = False,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_SCOPES:
            raise ValueError(f"attention must be one of {ATTENTION_SCOPES}, got {attention!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
        for name, value in [
            ("n_embed", n_embed),
            ("n_heads", n_heads),
            ("dim_feedforward", dim_feedforward),
            ("num_layers", num_layers),
            ("block_size", block_size),
        ]:
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_embed = n_embed
        self.n_heads = n_heads
        self.attention = attention
        self.block_size = int(block_size)
        self.kernel = kernel
        self.double_input_norm = double_input_norm
        layers = [
            _EncoderLayer(n_embed, n_heads, dim_feedforward, dropout, activation, norm_first)
            for _ in range(num_layers)
        ]
        self.transformer_encoder = _Encoder(layers, n_embed)
        self.norm_input = nn.LayerNorm(n_embed)
        self.cls_embedding = nn.Parameter(torch.randn(n_embed))

    def forward(
        self,
        h: Tensor,
        ptr: Tensor,
        edge_index: Tensor | None = None,
        need_attention: bool = False,
        attention_top_k: int = 32,
    ) -> GlobalEncoderOutput:
        """Encode a batch of samples.

        Parameters
        ----------
        h
            ``[N, E]`` local embeddings; the cells of sample ``b`` are rows
            ``ptr[b]:ptr[b + 1]``.
        ptr
            ``[B + 1]`` LongTensor of sample boundaries (PyG ``Batch.ptr``).
        edge_index
            ``[2, M]`` spatial edges with global indices (row 0 source ``j``, row 1 target ``i``;
            ``i`` attends to ``j`` in ``neighbourhood`` and ignores ``j`` in ``long_range``).
            Needed for those scopes, ignored (may be None) for ``full``.
        need_attention
            Also return the last layer's head-averaged attention (computed without gradients).
        attention_top_k
            Entries kept per cell row of the returned attention.

        Returns
        -------
        GlobalEncoderOutput
            Cell embeddings, CLS embeddings and, if requested, attention weights.

        Raises
        ------
        ValueError
            If shapes or ``ptr`` are inconsistent, ``edge_index`` is missing for a scope that
            needs it, an edge joins two samples, or ``attention_top_k < 1``.
        TypeError
            If ``ptr`` or ``edge_index`` is not a LongTensor.
        """
        _validate_inputs(h, ptr, edge_index, self.attention, self.n_embed)
        if need_attention and attention_top_k < 1:
            raise ValueError(f"attention_top_k must be >= 1, got {attention_top_k}")
        n = h.shape[0]
        ei = None if self.attention == "full" else edge_index
        layout = _SampleLayout(ptr, n, self.attention, ei)
        if ei is not None and ei.numel():
            crossing = layout.batch[ei[0]] != layout.batch[ei[1]]
            if bool(crossing.any()):
                raise ValueError(
                    f"edge_index has {int(crossing.sum())} edges between different samples"
                )

        if self.double_input_norm:
            h = self.norm_input(h)
        cls = self.cls_embedding.unsqueeze(0).expand(layout.n_samples, -1)
        x = self.norm_input(torch.cat([h, cls]))
        layers = self.transformer_encoder.layers
        weights = cls_w = None
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            x, w, c = layer(
                x, layout, self.block_size, self.kernel, need_attention and last, attention_top_k
            )
            if last:
                weights, cls_w = w, c
        x = self.transformer_encoder.norm(x)
        return GlobalEncoderOutput(x[:n], x[n:], weights, cls_w)
