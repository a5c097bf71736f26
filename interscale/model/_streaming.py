"""Per-gene R^2 of each head accumulated while inference runs: no prediction layer stored.

The consumer of the inference loop (:func:`interscale.model._inference.run_inference`) sees the
same folds as ``get_model_output`` and sums with the accumulator of
``interscale.evaluation.calculate_gene_ranks`` (:class:`interscale._r2.R2Accumulator`), so its
R^2 equals the one computed on stored predictions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from interscale._anndata import CellSelection
from interscale._r2 import R2Accumulator
from interscale.graphs import SampleGraph
from interscale.model._inference import run_inference
from interscale.model._module import InterScaleModule, ModuleOutput
from interscale.names import HEADS

__all__ = ["gene_r2_frame", "scored_heads", "stream_gene_r2"]

# Truth rows read at once by the R^2 accumulator: about this many float64 values (8 MiB).
_R2_BLOCK_VALUES = 1 << 20


def _dense_rows(matrix: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of a dense or CSR matrix as a float64 array."""
    block = matrix[rows]
    if sp.issparse(block):
        return block.toarray().astype(np.float64, copy=False)
    return np.asarray(block, dtype=np.float64)


class _R2Consumer:
    """Consumer of :func:`run_inference` that adds the selected cells to an R^2 accumulator.

    The truth is read here, block by block, for the cells whose predictions arrive; the sums
    and the rule for constant genes are those of :class:`interscale._r2.R2Accumulator`, as
    for ``calculate_gene_ranks`` on stored predictions.
    """

    needs_full_pass = False

    def __init__(self, truth: Any, selected: np.ndarray, heads: Sequence[str]) -> None:
        if sp.issparse(truth) and not isinstance(truth, sp.csr_matrix | sp.csr_array):
            truth = sp.csr_matrix(truth)  # row reads of CSC/COO are slow; still sparse
        self.truth = truth
        self.selected = selected
        self.heads = tuple(heads)
        n_genes = truth.shape[1]
        self.sums = R2Accumulator(n_genes, len(self.heads))
        self.step = max(1, _R2_BLOCK_VALUES // n_genes)

    def wants(self, rows: np.ndarray) -> bool:
        return bool(self.selected[rows].any())

    def full(
        self, graph: SampleGraph, rows: np.ndarray, core: np.ndarray | None, out: ModuleOutput
    ) -> None:
        return None

    def predictions(self, rows: np.ndarray, preds: dict[str, np.ndarray]) -> None:
        keep = self.selected[rows]
        if not keep.any():
            return
        rows = rows[keep]
        kept = [preds[head][keep] for head in self.heads]
        for start in range(0, len(rows), self.step):
            block = slice(start, start + self.step)
            self.sums.add(_dense_rows(self.truth, rows[block]), [p[block] for p in kept])

    def finish(self) -> dict[str, np.ndarray]:
        """Per-gene R^2 of each head; NaN for fewer than two cells or a constant truth."""
        return dict(zip(self.heads, self.sums.r2(), strict=True))


def scored_heads(
    module: InterScaleModule, heads: Sequence[str] | None, model_name: str
) -> list[str]:
    """The heads :func:`stream_gene_r2` scores: ``heads`` (checked) or every predicting head.

    Raises
    ------
    ValueError
        If ``heads`` names an unknown head or one the module has no decoder for.
    """
    present = module.heads
    if heads is None:
        return list(present)
    chosen = [heads] if isinstance(heads, str) else list(heads)
    unknown = [h for h in chosen if h not in HEADS]
    if unknown or not chosen:
        raise ValueError(f"gene_r2: heads must name some of {list(HEADS)}, got {heads!r}")
    absent = [h for h in chosen if h not in present]
    if absent:
        raise ValueError(
            f"gene_r2: this {model_name} has no {absent[0]} decoder (it predicts with "
            f"{list(present)}), so heads={chosen} cannot be scored; gene ranks compare the "
            "local and the global head, and gene_r2() without heads scores the ones it has"
        )
    return [h for h in HEADS if h in chosen]


def stream_gene_r2(
    module: InterScaleModule,
    graphs: Iterable[SampleGraph],
    truth: Any,
    selected: np.ndarray,
    *,
    heads: Sequence[str],
    masked: bool,
    pct_mask_nodes: float,
    fold_seed: int,
    progress_bar: bool = False,
    precision: str = "32",
) -> dict[str, np.ndarray]:
    """Per-gene R^2 of each head over the ``selected`` cells, no prediction layer kept.

    The loop and folds are those of :func:`infer` (graphs without a selected cell are not
    run; their folds are still drawn). R^2 = 1 - SS_res / SS_tot per gene over the selected
    cells' finite truth, NaN where fewer than two cells count or the truth is constant: the
    definition of :func:`interscale.evaluation.calculate_gene_ranks`.

    Parameters
    ----------
    module, graphs, masked, pct_mask_nodes, fold_seed, progress_bar, precision
        As for :func:`infer`.
    truth
        The training layer (dense or sparse, ``n_obs x n_genes``), read row block by block.
    selected
        Boolean ``(n_obs,)``: the scored cells (at least one).
    heads
        The heads scored, each with a decoder in ``module``.

    Returns
    -------
    dict
        Head name -> float64 R^2 per gene.
    """
    n_obs = truth.shape[0]
    accumulator = _R2Consumer(truth, selected, heads)
    run_inference(
        module,
        graphs,
        accumulator,
        n_obs=n_obs,
        masked=masked,
        pct_mask_nodes=pct_mask_nodes,
        fold_seed=fold_seed,
        attention_top_k=1,
        progress_bar=progress_bar,
        precision=precision,
    )
    return accumulator.finish()


def gene_r2_frame(
    r2: dict[str, np.ndarray], genes: Sequence[str], selection: CellSelection, masked: bool
) -> pd.DataFrame:
    """The table of :meth:`BaseModel.gene_r2`: one ``r2_<head>`` column per scored head."""
    df = pd.DataFrame(
        {f"r2_{head}": r2[head] for head in HEADS if head in r2},
        index=pd.Index([str(g) for g in genes], name="gene"),
    )
    df.attrs.update(
        cells=selection.label, n_cells=selection.n_cells, heads=list(r2), masked=bool(masked)
    )
    return df
