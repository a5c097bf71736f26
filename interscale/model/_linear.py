"""Closed-form fit of each head's linear part and of the shrinkage of its deep part.

``model.linear_part: true`` makes the ridge floor a special case of every head::

    prediction = linear(neighbourhood and sample means) + gamma_g * deep(cell context)

1. The linear part is a ridge regression fitted on the training samples before any gradient
   step, by the rule of ``interscale.tl.linear_baselines``: features standardised over the
   training cells, an unpenalised intercept, the penalty ``alpha`` and the design (nested)
   chosen by cross-validation over whole training samples (up to 5 folds, samples assigned in
   turn), here per gene. The local head chooses between the 1-hop means and the 1- and 2-hop
   means; the global head may add the leave-one-out sample mean. The floors choose one
   penalty per design for all genes, a special case (``per_gene=False``).
2. The deep part starts at zero and is trained, masked as before, on what the linear part
   leaves.
3. After training, ``gamma_g`` in [0, 1] is the least-squares factor of the deep part on the
   masked validation cells (per gene and head): the deep part is kept only as far as samples it
   was not trained on support it.

The statistics are sums over cells (``(F, F)`` and ``(F, G)`` with ``F = 3 w`` at most), the
solver is :mod:`interscale._ridge`, the one the floors use: no matrix grows with the cells of a
sample, and one symmetric eigendecomposition per design and fold serves every penalty. ``w``
is the number of genes up to 256 of them; above, the averages are those of the top 256
principal components of the training cells (the floors' ``n_components="auto"``), and the
ridge is the one on the standardised gene averages restricted to that subspace: the floors'
twin at every panel size, with a Gram matrix of at most 768 features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from interscale._components import ComponentScale, principal_axes
from interscale._ridge import RidgePath, RidgeStats
from interscale.graphs import GraphBatch, SampleGraph
from interscale.nn import FEATURE_BLOCKS, neighbourhood_features
from interscale.train import fold_masks

__all__ = ["ALPHA_GRID", "HEAD_DESIGNS", "fit_gamma", "fit_linear_part"]

#: Penalties, as multiples of the number of training cells (the floors' default grid).
ALPHA_GRID = tuple(10.0 ** np.arange(-6, 1))

#: Candidate designs of each head, nested; cross-validation picks one with its penalty.
HEAD_DESIGNS = {
    "local": (("hop1",), ("hop1", "hop2")),
    "global": (("hop1",), ("hop1", "hop2"), ("hop1", "hop2", "sample")),
}

_MAX_FOLDS = 5


def _graph_features(
    graph: SampleGraph, fill: torch.Tensor, basis: torch.Tensor | None, blocks: Sequence[str]
):
    """Float64 features (all blocks side by side) and targets of a graph's core cells.

    The blocks average the genes, or with ``basis`` the scores ``(x - fill) @ basis`` (an
    empty neighbourhood then gets the training mean's scores, zeros).
    """
    batch = GraphBatch.collate([graph])
    x = batch.x.double()
    if basis is None:
        source, empty = x, fill
    else:
        source, empty = (x - fill) @ basis, fill.new_zeros(basis.shape[1])
    feats = neighbourhood_features(source, batch.edge_index, batch.ptr, empty, blocks)
    f = torch.cat([feats[b] for b in blocks], dim=1)
    if graph.core is not None:
        f, x = f[graph.core], x[graph.core]
    return f.numpy(), x.numpy()


def _core_rows(graph: SampleGraph) -> np.ndarray:
    x = graph.x if graph.core is None else graph.x[graph.core]
    return x.double().numpy()


def fit_linear_part(
    module: torch.nn.Module,
    train_graphs: Sequence[SampleGraph],
    alpha_grid: Sequence[float] | None = None,
    per_gene: bool = True,
    seed: int = 0,
) -> dict:
    """Fit the linear part of every head of ``module`` on the training graphs, in place.

    Parameters
    ----------
    module
        An ``InterScaleModule`` built with ``linear_part=True``.
    train_graphs
        The training samples' graphs (their core cells are the rows of the regression).
    alpha_grid
        Penalties as multiples of the training cells (default :data:`ALPHA_GRID`).
    per_gene
        Choose design and penalty per gene (default; a multi-target ridge is one ridge per
        target, so each gene may take its own). ``False`` chooses one for all genes, by the
        mean cross-validated R^2, as ``linear_baselines`` chooses each floor's penalty.
    seed
        Seed of the randomized principal axes (components above 1,024 genes only).

    Returns
    -------
    dict
        Per head: each gene's ``design`` (block names joined by ``+``) and ``alpha``, and the
        mean cross-validated R^2 of the choice (``cv_r2``). Under ``"features"`` what was
        averaged, as ``linear_baselines`` records it: ``"averaged"`` (``"genes"`` or
        ``"components"``), ``"n_components"``, ``"explained_variance"`` (the components'
        share of the training cells' variance) and ``"pca"`` (``"none"``, ``"exact"`` or
        ``"randomized"``).

    Raises
    ------
    ValueError
        With fewer than 2 training graphs (cross-validation over samples needs 2).
    """
    part = module.linear_part
    if len(train_graphs) < 2:
        raise ValueError(
            "model.linear_part chooses its penalty by cross-validation over whole training "
            f"samples and needs at least 2 of them, found {len(train_graphs)}"
        )
    n_genes = part.n_genes
    grid = [float(a) for a in (ALPHA_GRID if alpha_grid is None else alpha_grid)]
    # the training mean: what an empty neighbourhood gets, and the shift of every sum (all
    # features are averages of the layer, so shifting by it keeps the sums' digits)
    total_y, count = np.zeros(n_genes), 0
    for graph in train_graphs:
        x = graph.x if graph.core is None else graph.x[graph.core]
        total_y += x.double().sum(0).numpy()
        count += x.shape[0]
    fill = total_y / count
    blocks = FEATURE_BLOCKS
    r = part.n_components
    scale = None  # StandardScaler on the gene averages
    if r is None:
        width, basis, share, method = n_genes, None, 1.0, "none"
        shift = np.tile(fill, len(blocks))
    else:
        basis, share, method = principal_axes(
            lambda: (_core_rows(g) for g in train_graphs), fill, r, int(seed)
        )
        width = r
        shift = np.zeros(len(blocks) * r)  # every score average is centred near 0 already
        scale = ComponentScale(basis, fill)
    n_feat = len(blocks) * width
    # whole training samples, assigned to folds in turn (the floors' rule)
    n_folds = min(_MAX_FOLDS, len(train_graphs))
    folds = [RidgeStats(n_feat, n_genes, shift, fill) for _ in range(n_folds)]
    fill_t = torch.from_numpy(fill)
    basis_t = None if basis is None else torch.from_numpy(basis)
    for i, graph in enumerate(train_graphs):
        folds[i % n_folds].add(*_graph_features(graph, fill_t, basis_t, blocks))
    total = RidgeStats.total(folds)
    alphas = [a * total.n for a in grid]

    def columns(design: Sequence[str]) -> np.ndarray:
        return np.concatenate(
            [np.arange(k * width, (k + 1) * width) for k, b in enumerate(blocks) if b in design]
        )

    designs = sorted({d for head in part.heads for d in HEAD_DESIGNS[head]}, key=len)
    # pooled squared error of every design and penalty per gene, each fold fitted on the others
    cv_sse = {d: np.zeros((len(alphas), n_genes)) for d in designs}
    for fold in folds:
        rest = total - fold
        for d in designs:
            cv_sse[d] += RidgePath(rest, columns(d), scale).sse(fold, alphas)
    sst = sum(fold.sst() for fold in folds)
    varies = sst > 1e-12 * max(1.0, float(sst.max(initial=0.0)))
    if not varies.any():
        raise ValueError(
            "model.linear_part: every gene is constant within the training samples, so "
            "cross-validation cannot choose the ridge penalty"
        )
    # one eigendecomposition per design for the fit on all training samples, whatever the
    # number of (design, penalty) options the genes pick
    paths: dict[tuple[str, ...], RidgePath] = {}
    report: dict = {}
    for head in part.heads:
        options = HEAD_DESIGNS[head]
        # (design, alpha) options x genes; the first option wins ties (the smallest design,
        # the smallest penalty): nested designs only add features
        sse = np.concatenate([cv_sse[d] for d in options])
        if per_gene:
            pick = np.argmin(sse, axis=0)
        else:
            pooled = 1.0 - sse[:, varies] / sst[varies]
            pick = np.full(n_genes, int(np.argmax(pooled.mean(axis=1))))
        weight = np.zeros((len(blocks), width, n_genes))
        bias = np.zeros(n_genes)
        for option in np.unique(pick):
            design, alpha = options[option // len(alphas)], alphas[option % len(alphas)]
            genes = np.flatnonzero(pick == option)
            if design not in paths:
                paths[design] = RidgePath(total, columns(design), scale)
            w, b = paths[design].coef(alpha)
            bias[genes] = b[genes]
            for j, name in enumerate(n for n in blocks if n in design):
                weight[blocks.index(name)][:, genes] = w[j * width : (j + 1) * width, genes]
        design_of_gene = [options[o // len(alphas)] for o in pick]
        used = np.array([any(b in d for d in design_of_gene) for b in blocks])
        with torch.no_grad():
            getattr(part, f"{head}_weight").copy_(torch.from_numpy(weight))
            getattr(part, f"{head}_bias").copy_(torch.from_numpy(bias))
            getattr(part, f"{head}_blocks").copy_(torch.from_numpy(used))
            getattr(part, f"{head}_gamma").fill_(1.0)
        best = 1.0 - sse[pick, np.arange(n_genes)][varies] / sst[varies]
        report[head] = {
            "design": ["+".join(d) for d in design_of_gene],
            "alpha": [float(alphas[o % len(alphas)]) for o in pick],
            "cv_r2": float(best.mean()),
        }
    with torch.no_grad():
        part.fill.copy_(torch.from_numpy(fill))
        if basis is not None:
            part.basis.copy_(torch.from_numpy(basis))
    report["features"] = {
        "averaged": "genes" if r is None else "components",
        "n_components": int(width),
        "explained_variance": float(share),
        "pca": method,
    }
    return report


@torch.no_grad()
def fit_gamma(
    module: torch.nn.Module,
    val_graphs: Sequence[SampleGraph],
    pct_mask_nodes: float,
    seed: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Set each head's ``gamma_g``: the least-squares factor of its deep part on masked val cells.

    Every core cell of the validation graphs is predicted while masked (the folds of
    ``get_model_output``, drawn from ``seed``); per gene ``gamma = <r, d> / <d, d>`` clipped to
    [0, 1], with ``r`` the truth minus the linear part and ``d`` the deep part (0 where the deep
    part is zero on every cell). Without validation graphs gamma stays 1.

    Returns
    -------
    dict
        Head -> the fitted gammas.
    """
    part = module.linear_part
    was_training = module.training
    module.eval()
    for head in part.heads:
        part.gamma(head).fill_(1.0)
    if not val_graphs:
        module.train(was_training)
        return {head: part.gamma(head).tolist() for head in part.heads}
    sums = {head: [0.0, 0.0] for head in part.heads}
    generator = torch.Generator().manual_seed(seed)
    for graph in val_graphs:
        batch = GraphBatch.collate([graph]).to(device)
        linear = part(batch.x, batch.edge_index, batch.ptr)
        for mask in fold_masks(graph.n_cells, pct_mask_nodes, generator, eligible=graph.core):
            mask = mask.to(device)
            out = module(batch.x, batch.edge_index, batch.ptr, mask=mask, features=batch.features)
            truth = batch.x[mask].double()
            for head in part.heads:
                lin = linear[head][mask].double()
                deep = getattr(out, f"y_{head}")[mask].double() - lin
                sums[head][0] = sums[head][0] + ((truth - lin) * deep).sum(0)
                sums[head][1] = sums[head][1] + (deep * deep).sum(0)
    for head, (rd, dd) in sums.items():
        rd = torch.as_tensor(rd, dtype=torch.float64)
        dd = torch.as_tensor(dd, dtype=torch.float64)
        gamma = torch.where(dd > 0, rd / dd.clamp(min=1e-300), torch.zeros_like(dd))
        part.gamma(head).copy_(gamma.clamp(0.0, 1.0).to(part.gamma(head).dtype))
    module.train(was_training)
    return {head: part.gamma(head).tolist() for head in part.heads}
