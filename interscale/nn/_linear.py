"""The linear part of each head: a ridge on neighbourhood and sample means, fitted in closed form.

The features of a cell never contain the cell itself: the mean of its 1-hop neighbours, the
mean of every cell within 2 hops, and the leave-one-out mean of its sample (graph), all of the
unmasked expression. Masking a cell therefore changes nothing here, and the prediction of a
head whose deep part is switched off is exactly the ridge floor of
``interscale.tl.linear_baselines`` on the same design. The weights are buffers (not trained
by the optimiser) written by ``interscale.model``'s closed-form fit.

Large panels follow the floors' rule (:func:`interscale._components.auto_components`): above 256
genes the blocks are averages of the cell scores ``(x - fill) @ basis`` on the top 256
principal axes of the training cells, not of the genes. Averaging is linear, so these are
the gene averages' components; the weights map them back to every gene, and a prediction
costs ``N x 3 r x G`` instead of ``N x 3 G x G``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from interscale._components import auto_components

__all__ = ["FEATURE_BLOCKS", "LinearPart", "neighbourhood_features"]

#: The feature blocks, each ``n_genes`` wide, in the order of :class:`LinearPart`'s weights.
FEATURE_BLOCKS = ("hop1", "hop2", "sample")


def _reach_operator(rows: torch.Tensor, cols: torch.Tensor, n: int, dtype) -> tuple:
    """Row-mean operator (sparse COO) of a binary reach; duplicate and self pairs dropped."""
    keep = rows != cols
    rows, cols = rows[keep], cols[keep]
    # unique (row, col) pairs without a hash: one sort of the flat index
    flat = torch.unique(rows * n + cols)  # sorted, so rows come out grouped in order
    rows, cols = flat // n, flat % n
    degree = torch.bincount(rows, minlength=n)
    values = (1.0 / degree.clamp(min=1).to(dtype))[rows]
    op = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (n, n), is_coalesced=True, check_invariants=False
    )
    return op, degree == 0, rows, cols


def neighbourhood_features(
    x: torch.Tensor,
    edge_index: torch.Tensor,
    ptr: torch.Tensor,
    fill: torch.Tensor,
    blocks: Sequence[str] = FEATURE_BLOCKS,
) -> dict[str, torch.Tensor]:
    """The feature blocks of every cell of a batch, none of which contains the cell itself.

    Parameters
    ----------
    x
        Unmasked expression ``(N, G)``.
    edge_index
        The batch's spatial graph ``(2, E)`` (source, target); a cell's neighbours are the
        sources of the edges that end at it.
    ptr
        Offsets of the samples ``(B + 1,)``: the leave-one-out mean runs within each.
    fill
        ``(G,)`` given to a cell without neighbours (or alone in its sample): the training mean,
        as the floors do.
    blocks
        Which of :data:`FEATURE_BLOCKS` to compute.

    Returns
    -------
    dict
        Block name -> ``(N, G)`` tensor in the dtype of ``x``.
    """
    n = x.shape[0]
    fill = fill.to(device=x.device, dtype=x.dtype)
    out: dict[str, torch.Tensor] = {}
    rows, cols = edge_index[1], edge_index[0]
    if "hop1" in blocks or "hop2" in blocks:
        op1, empty1, rows1, cols1 = _reach_operator(rows, cols, n, x.dtype)
        if "hop1" in blocks:
            out["hop1"] = torch.where(empty1[:, None], fill, op1 @ x)
        if "hop2" in blocks:
            # two-step paths i <- k <- j, with the 1-hop pairs, as the cumulative 2-hop reach
            pair = torch.sparse_coo_tensor(
                torch.stack([rows1, cols1]),
                torch.ones(rows1.numel(), dtype=x.dtype, device=x.device),
                (n, n),
                check_invariants=False,
            ).coalesce()
            with warnings.catch_warnings():
                # torch's sparse product goes through its (beta) CSR layout and says so; only
                # the index set of the product is used, which does not depend on its layout
                warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
                two = torch.sparse.mm(pair, pair).coalesce().indices()
            op2, empty2, _, _ = _reach_operator(
                torch.cat([rows1, two[0]]), torch.cat([cols1, two[1]]), n, x.dtype
            )
            out["hop2"] = torch.where(empty2[:, None], fill, op2 @ x)
    if "sample" in blocks:
        sizes = ptr[1:] - ptr[:-1]
        graph_of_cell = torch.repeat_interleave(torch.arange(sizes.numel(), device=x.device), sizes)
        sums = torch.zeros(sizes.numel(), x.shape[1], dtype=x.dtype, device=x.device)
        sums.index_add_(0, graph_of_cell, x)
        others = (sizes[graph_of_cell] - 1).to(x.dtype)
        loo = (sums[graph_of_cell] - x) / others.clamp(min=1)[:, None]
        out["sample"] = torch.where((others == 0)[:, None], fill, loo)
    return out


class LinearPart(nn.Module):
    """Per head: ``bias + sum_b features_b @ weight_b``, plus the shrinkage of the deep part.

    All tensors are buffers written by the closed-form fit: ``{head}_weight``
    ``(len(FEATURE_BLOCKS), width, G)``, ``{head}_bias`` ``(G,)``, ``{head}_blocks`` (bool,
    which blocks the head's design uses), ``{head}_gamma`` ``(G,)`` (the factor of the deep
    part in [0, 1]; 1 while training) and ``fill`` ``(G,)`` (the training mean). ``width`` is
    ``G`` when the genes are averaged; with components it is ``r`` and ``basis`` ``(G, r)``
    holds the principal axes (the buffer exists only then, so a state dict says which).

    Parameters
    ----------
    n_genes
        Genes predicted (and averaged).
    heads
        Heads with a linear part (``"local"``, ``"global"``).
    n_components
        What is averaged: ``"auto"`` (default) the floors' rule, the genes up to 256 of them
        and 256 principal components above; ``None`` the genes; an int ``r`` that many
        components (the genes when ``r >= n_genes``).
    """

    def __init__(
        self, n_genes: int, heads: Sequence[str], n_components: int | str | None = "auto"
    ) -> None:
        super().__init__()
        self.n_genes = int(n_genes)
        self.heads = tuple(heads)
        self.register_buffer("fill", torch.zeros(self.n_genes))
        self._build(_components(n_components, self.n_genes))

    def _build(self, r: int | None) -> None:
        """(Re)create the weight buffers for averages of the genes (``None``) or ``r`` scores."""
        g, k = self.n_genes, len(FEATURE_BLOCKS)
        self.n_components = r
        width = g if r is None else r
        if r is None:
            self._buffers.pop("basis", None)
        else:
            self.register_buffer("basis", torch.zeros(g, r))
        for head in self.heads:
            self.register_buffer(f"{head}_weight", torch.zeros(k, width, g))
            self.register_buffer(f"{head}_bias", torch.zeros(g))
            self.register_buffer(f"{head}_blocks", torch.zeros(k, dtype=torch.bool))
            self.register_buffer(f"{head}_gamma", torch.ones(g))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A state dict records what was averaged by the presence of ``basis``: one written
        # before components existed (or under another rule) loads in its own form.
        basis = state_dict.get(prefix + "basis")
        r = None if basis is None else int(basis.shape[1])
        if r != self.n_components:
            device = self.fill.device
            self._build(r)
            self.to(device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def blocks(self, head: str) -> list[str]:
        """Feature blocks the head's design uses."""
        used = getattr(self, f"{head}_blocks").tolist()
        return [name for name, on in zip(FEATURE_BLOCKS, used, strict=True) if on]

    def gamma(self, head: str) -> torch.Tensor:
        """The per-gene factor of the head's deep part."""
        return getattr(self, f"{head}_gamma")

    def sources(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What is averaged, ``(N, width)``, and what an empty neighbourhood gets instead.

        The genes and the training mean; with components the scores ``(x - fill) @ basis``
        and zeros (the training mean's scores).
        """
        fill = self.fill.to(device=x.device, dtype=x.dtype)
        if self.n_components is None:
            return x, fill
        basis = self.basis.to(device=x.device, dtype=x.dtype)
        return (x - fill) @ basis, x.new_zeros(self.n_components)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, ptr: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The linear prediction ``(N, G)`` of every head, from the unmasked expression."""
        needed = sorted({b for head in self.heads for b in self.blocks(head)})
        with torch.no_grad():
            source, fill = self.sources(x.detach())
            feats = neighbourhood_features(source, edge_index, ptr, fill, needed)
            out = {}
            for head in self.heads:
                weight = getattr(self, f"{head}_weight").to(x.dtype)
                pred = getattr(self, f"{head}_bias").to(x.dtype).expand(x.shape[0], -1)
                for name in self.blocks(head):
                    pred = pred + feats[name] @ weight[FEATURE_BLOCKS.index(name)]
                out[head] = pred
        return out


def _components(n_components: int | str | None, n_genes: int) -> int | None:
    """Number of components averaged, or ``None`` for the genes themselves."""
    if isinstance(n_components, str):
        if n_components != "auto":
            raise ValueError(
                f"LinearPart: n_components must be 'auto', None or an int >= 1, got "
                f"{n_components!r}"
            )
        return auto_components(n_genes)
    if n_components is None:
        return None
    if isinstance(n_components, bool) or not isinstance(n_components, int):
        raise TypeError(
            f"LinearPart: n_components must be 'auto', None or an int, got {n_components!r}"
        )
    if n_components < 1:
        raise ValueError(f"LinearPart: n_components must be >= 1, got {n_components}")
    return None if n_components >= n_genes else int(n_components)
