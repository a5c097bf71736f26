"""Per-gene R^2 of one or more predictions, from float64 sums accumulated over row chunks.

The one accumulator behind every per-gene R^2 the package reports: the validation R^2 of
training (``interscale.train``, summed over the ranks of data-parallel training), the R^2 summed
up during inference (``model.gene_r2``) and the R^2 of stored prediction layers
(``interscale.evaluation.calculate_gene_ranks``). For each head and gene it keeps the number of
cells counted, the sum and the sum of squares of the truth about a centre, and the sum of
squared residuals; R^2 = 1 - SS_res / SS_tot.

The centre is the truth of the first cell added (0 where that value is not finite). Sums about
a value of the data keep the digits of SS_tot that ``sum(y^2) - sum(y)^2 / n`` loses to
cancellation for a gene with a large mean, and a constant gene sums to exactly zero, which the
rule for constant genes relies on: a gene is constant when its standard deviation over the
counted cells is at most ``CONSTANT_RTOL`` times its ``|mean|`` (the rule of
``interscale._anndata``), or when its sum of squares about the mean is below what the
subtraction resolves (the bootstrap's sums about a centre that need not be a value of the
resample), and its R^2 is then NaN, as it is for fewer than two counted cells.
:func:`r2_from_sums` is that rule; the bootstrap of ``interscale.evaluation`` applies it to its
resampled sums.

API (floor 0: numpy and ``interscale._anndata``)
-----------------------------------------------
``R2Accumulator(n_genes, n_heads, skip_nonfinite=True)``
    ``.add(y, preds)``, ``.merge(other)``, ``.centred_at(shift)``, ``.to_vector()``,
    ``R2Accumulator.from_vector(vector, shift)``, ``.r2()``, ``.mean_r2()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interscale._anndata import CONSTANT_RTOL

__all__ = ["R2Accumulator", "r2_from_sums"]

# Rows of the statistics of one head: cells counted, sum and sum of squares of the centred
# truth, sum of squared residuals (the order of the vector of :meth:`R2Accumulator.to_vector`).
_N, _SUM, _SUM_SQ, _SS_RES = range(4)
# What float64 resolves of ``sum((y - c)^2) - sum(y - c)^2 / n``, relative to the first term.
_ROUNDING_RTOL = 1e-10


class R2Accumulator:
    """Per-gene sums from which each head's R^2 follows, added chunk by chunk.

    Parameters
    ----------
    n_genes
        Columns of the truth and of every prediction.
    n_heads
        Predictions scored against the same truth.
    skip_nonfinite
        Leave out, per gene and head, the entries where the truth or that head's prediction
        is not finite (the rule for stored layers). When false every entry counts, so that a
        non-finite prediction shows as a NaN R^2 instead of being passed over.

    Attributes
    ----------
    shift
        The centre of the sums, per gene (``None`` until cells are added).
    """

    def __init__(self, n_genes: int, n_heads: int, *, skip_nonfinite: bool = True) -> None:
        self.n_genes = int(n_genes)
        self.n_heads = int(n_heads)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.shift: np.ndarray | None = None
        self.stats = np.zeros((self.n_heads, 4, self.n_genes))

    def add(self, y: np.ndarray, preds: Sequence[np.ndarray]) -> None:
        """Add cells: ``y`` (cells x genes) and each head's predictions of them, same shape."""
        y = np.asarray(y, dtype=np.float64)
        if len(preds) != self.n_heads or y.shape[1:] != (self.n_genes,):
            raise ValueError(
                f"R2Accumulator of {self.n_heads} head(s) x {self.n_genes} genes got a truth "
                f"of shape {y.shape} and {len(preds)} prediction(s)"
            )
        if y.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = np.where(np.isfinite(y[0]), y[0], 0.0)
        y_ok = np.isfinite(y) if self.skip_nonfinite else None
        truth = None  # the truth's sums of the chunk, shared by heads with every entry counted
        with np.errstate(invalid="ignore", over="ignore"):
            yc = y - self.shift
            for stats, pred in zip(self.stats, preds, strict=True):
                pred = np.asarray(pred, dtype=np.float64)
                res = (y - pred) ** 2
                valid = None if y_ok is None else y_ok & np.isfinite(pred)
                if valid is None or valid.all():
                    if truth is None:
                        truth = (y.shape[0], yc.sum(axis=0), (yc * yc).sum(axis=0))
                    stats[_N] += truth[0]
                    stats[_SUM] += truth[1]
                    stats[_SUM_SQ] += truth[2]
                    stats[_SS_RES] += res.sum(axis=0)
                else:
                    kept = np.where(valid, yc, 0.0)
                    stats[_N] += valid.sum(axis=0)
                    stats[_SUM] += kept.sum(axis=0)
                    stats[_SUM_SQ] += (kept * kept).sum(axis=0)
                    stats[_SS_RES] += np.where(valid, res, 0.0).sum(axis=0)

    def centred_at(self, shift: np.ndarray) -> R2Accumulator:
        """The same cells with their sums about ``shift`` (per gene) instead of :attr:`shift`.

        Exact where the two centres agree; elsewhere the sums lose only what the distance
        between the centres costs, little while both are values of the gene.
        """
        out = R2Accumulator(self.n_genes, self.n_heads, skip_nonfinite=self.skip_nonfinite)
        out.shift = np.array(shift, dtype=np.float64).reshape(self.n_genes)
        out.stats[:] = self.stats
        if self.shift is not None:
            d = self.shift - out.shift
            n, total = self.stats[:, _N], self.stats[:, _SUM]
            out.stats[:, _SUM] = total + n * d
            out.stats[:, _SUM_SQ] = self.stats[:, _SUM_SQ] + 2.0 * d * total + n * d * d
        return out

    def merge(self, other: R2Accumulator) -> None:
        """Add the cells of ``other`` (an accumulator of the same shape)."""
        if other.stats.shape != self.stats.shape:
            raise ValueError("R2Accumulator.merge: the heads or genes differ")
        if other.shift is None:
            return
        if self.shift is None:
            self.shift = other.shift.copy()
        self.stats += other.centred_at(self.shift).stats

    def to_vector(self) -> np.ndarray:
        """The sums as one float64 vector (zeros before any cell); :attr:`shift` is not in it.

        The vectors of accumulators about the same centre add up to the vector of one
        accumulator over all their cells: the all-reduce of data-parallel training.
        """
        return self.stats.ravel().copy()

    @classmethod
    def from_vector(
        cls, vector: np.ndarray, shift: np.ndarray, *, skip_nonfinite: bool = True
    ) -> R2Accumulator:
        """The accumulator of :meth:`to_vector`'s ``vector`` about ``shift`` (per gene)."""
        shift = np.asarray(shift, dtype=np.float64)
        vector = np.asarray(vector, dtype=np.float64)
        n_genes = len(shift)
        if n_genes == 0 or len(vector) % (4 * n_genes):
            raise ValueError(
                f"R2Accumulator.from_vector: {len(vector)} values are not 4 sums per head of "
                f"{n_genes} genes"
            )
        acc = cls(n_genes, len(vector) // (4 * n_genes), skip_nonfinite=skip_nonfinite)
        acc.shift = shift.copy()
        acc.stats[:] = vector.reshape(acc.stats.shape)
        return acc

    def _r2_and_defined(self) -> tuple[np.ndarray, np.ndarray]:
        """(heads x genes) R^2 and where it is defined (two or more cells, not constant)."""
        n, total, total_sq, ss_res = (self.stats[:, i] for i in range(4))
        shift = np.zeros(self.n_genes) if self.shift is None else self.shift
        return r2_from_sums(n, total, total_sq, ss_res, shift)

    def r2(self) -> list[np.ndarray]:
        """Per-gene R^2 of each head (float64), NaN for fewer than two cells or a constant gene."""
        return list(self._r2_and_defined()[0])

    def mean_r2(self) -> list[float]:
        """Each head's mean R^2 over the genes where it is defined (NaN where there is none).

        A NaN R^2 of a defined gene (a non-finite prediction counted) makes the mean NaN.
        """
        r2, defined = self._r2_and_defined()
        return [
            float(v[d].mean()) if d.any() else float("nan")
            for v, d in zip(r2, defined, strict=True)
        ]


def r2_from_sums(
    n: np.ndarray,
    total: np.ndarray,
    total_sq: np.ndarray,
    ss_res: np.ndarray,
    shift: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """R^2 and where it is defined, from sums about ``shift``: the one rule for constant genes.

    Parameters
    ----------
    n, total, total_sq, ss_res
        Per gene (any leading axes, e.g. heads or resamples, broadcast together): the weight
        of the cells counted, the sum and the sum of squares of the truth minus ``shift``, and
        the sum of squared residuals.
    shift
        The centre of the sums, per gene (broadcast against the sums).

    Returns
    -------
    r2, defined
        ``1 - ss_res / ss_tot`` where ``defined`` (a weight of at least two, a standard
        deviation above ``CONSTANT_RTOL`` times ``|mean|`` and a sum of squares about the
        mean above ``1e-10`` of ``total_sq``), NaN elsewhere.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_c = np.divide(total, n, out=np.zeros(np.broadcast(total, n).shape), where=n > 0)
        ss_tot = total_sq - total * mean_c
        # constant: a spread within CONSTANT_RTOL of |mean|, or a sum of squares about the mean
        # that the subtraction cannot tell from zero (sums about a centre that is not a value
        # of these cells, as in a resample, do not cancel exactly)
        rounding = _ROUNDING_RTOL * total_sq
        constant = ss_tot <= n * (CONSTANT_RTOL * np.abs(shift + mean_c)) ** 2 + rounding
        defined = (n >= 2) & ~constant
        r2 = np.where(defined, 1.0 - ss_res / np.where(defined, ss_tot, 1.0), np.nan)
    return r2, defined
