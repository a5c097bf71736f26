"""Whole samples to train / validation / test, seeded and optionally stratified."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from interscale._anndata import check_not_view, obs_column_codes
from interscale._compat import accepts_library_key
from interscale.names import SPLITS


def _split_sizes(n_samples: int, fractions: Sequence[float]) -> np.ndarray:
    """Samples per split: largest remainders of ``fractions * n``, at least one train and val."""
    quota = np.asarray(fractions, dtype=np.float64) * n_samples
    sizes = np.floor(quota).astype(np.int64)
    # hand the samples left over to the largest remainders (ties: train before val before test)
    leftover = n_samples - int(sizes.sum())
    order = np.lexsort((np.arange(3), -(quota - sizes)))
    sizes[order[:leftover]] += 1
    for needed in (0, 1):  # train, then val: take one from the largest split that can spare it
        if sizes[needed] == 0:
            spare = [i for i in range(3) if i != needed and sizes[i] > (1 if i < 2 else 0)]
            donor = max(spare, key=lambda i: sizes[i])
            sizes[donor] -= 1
            sizes[needed] += 1
    return sizes


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise TypeError(
            f"fractions must be three numbers (train, val, test), got {fractions!r}"
        ) from None
    if len(values) != 3:
        raise ValueError(f"fractions must be three numbers (train, val, test), got {fractions!r}")
    if not all(np.isfinite(v) and v >= 0 for v in values) or values[0] <= 0 or values[1] <= 0:
        raise ValueError(f"fractions must be finite and >= 0, with train and val > 0; got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {values} (sum {sum(values):.6g})")
    return values


@accepts_library_key
def split_samples(
    adata: ad.AnnData,
    sample_key: str,
    fractions: Sequence[float] = (0.5, 0.25, 0.25),
    stratify_key: str | None = None,
    seed: int = 0,
    key_added: str = "split",
) -> pd.Series:
    """Assign whole samples to ``train`` / ``val`` / ``test`` and write the split column.

    Samples (the values of ``adata.obs[sample_key]``) are shuffled with ``seed``; with
    ``stratify_key`` they are shuffled within each stratum and the strata interleaved, so that
    every split mixes the strata whenever its size allows. The number of samples per split is
    the largest-remainder rounding of ``fractions`` times the number of samples, with at least
    one training and one validation sample.

    Parameters
    ----------
    adata
        Cells with a sample column.
    sample_key
        obs column naming each cell's sample (e.g. ``"library_id"``).
        (``library_key=``, squidpy's word, is accepted for it.)
    fractions
        Shares of samples for train, val and test (sum 1; train and val > 0). The default
        (0.5, 0.25, 0.25) keeps a quarter of the samples as test: the validation samples
        choose the best epoch, so only the test samples are unseen for held-out scores.
    stratify_key
        obs column constant within each sample (e.g. a condition) to balance over the splits.
    seed
        Seed of the shuffle; the same seed gives the same split.
    key_added
        obs column written (categorical with categories ``train``, ``val``, ``test``).

    Returns
    -------
    The split of each sample (index: sample names). Also writes ``adata.obs[key_added]`` and
    ``adata.uns["split_samples"]`` (the parameters).

    Raises
    ------
    KeyError
        If ``sample_key`` or ``stratify_key`` is not an obs column.
    ValueError
        With fewer than two samples (a single section can be cut into spatial tiles with
        :func:`interscale.pp.tile` and the tiles split), invalid fractions, or a stratum that
        varies within a sample.
    TypeError
        If ``adata`` is a view or ``fractions`` are not numbers.
    """
    check_not_view(adata, "split_samples")
    values = _check_fractions(fractions)
    codes, samples = obs_column_codes(adata, sample_key, "sample_key")
    n = len(samples)
    if n < 2:
        raise ValueError(
            f"split_samples: obs[{sample_key!r}] has {n} sample(s); whole-sample splits need at "
            "least two (one to train, one to validate). Cut a single section into spatial tiles "
            "with interscale.pp.tile(adata, ...) and split the tiles (sample_key='tile')."
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    strata = np.zeros(n, dtype=np.int64)
    if stratify_key is not None:
        s_codes, _ = obs_column_codes(adata, stratify_key, "stratify_key")
        per_sample = pd.DataFrame({"sample": codes, "stratum": s_codes}).groupby("sample")
        varying = per_sample["stratum"].nunique()
        if (varying > 1).any():
            bad = [samples[i] for i in varying.index[varying > 1][:5]]
            raise ValueError(
                f"stratify_key {stratify_key!r} varies within samples {bad}; it must be constant "
                "within each sample"
            )
        strata = per_sample["stratum"].first().to_numpy()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    # rank of each sample within its shuffled stratum; sorting by rank interleaves the strata
    rank = np.empty(n, dtype=np.int64)
    stratum_sorted = strata[perm]
    order_in = np.argsort(stratum_sorted, kind="stable")
    starts = np.searchsorted(stratum_sorted[order_in], stratum_sorted[order_in], side="left")
    rank[perm[order_in]] = np.arange(n) - starts
    order = np.lexsort((rng.permutation(n), rank))
    sizes = _split_sizes(n, values)
    labels = np.empty(n, dtype=object)
    labels[order[: sizes[0]]] = SPLITS[0]
    labels[order[sizes[0] : sizes[0] + sizes[1]]] = SPLITS[1]
    labels[order[sizes[0] + sizes[1] :]] = SPLITS[2]
    per_cell = pd.Categorical(labels[codes], categories=list(SPLITS))
    adata.obs[key_added] = pd.Series(per_cell, index=adata.obs_names)
    adata.uns["split_samples"] = {
        "library_key": sample_key,
        "fractions": list(values),
        "stratify_key": stratify_key,
        "seed": int(seed),
        "key_added": key_added,
        "n_samples": {split: int(k) for split, k in zip(SPLITS, sizes, strict=True)},
    }
    return pd.Series(labels, index=pd.Index(samples, name=sample_key), name=key_added)
