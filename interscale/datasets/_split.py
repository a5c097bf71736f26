"""Whole-sample train / validation / test assignment shared by the built-in datasets."""

from __future__ import annotations

import numpy as np

from interscale.names import SPLITS

SPLIT_CATEGORIES = list(SPLITS)


def split_counts(n_samples: int) -> tuple[int, int, int]:
    """Number of train, validation and test samples for ``n_samples`` samples.

    About 50 / 25 / 25 % of the samples, with at least one sample in each split when there are
    three or more samples (9 / 4 / 4 for 17 samples, 6 / 3 / 3 for 12, 2 / 1 / 1 for 4). The
    test share is as large as the validation share because the validation samples choose the
    best epoch and stop training: only the test samples are held out from everything, and every
    held-out score is read on them. Quarters are rounded down, so from four samples on the
    training share never drops below half (4 / 1 / 1 for 6 samples, 5 / 1 / 1 for 7).

    Parameters
    ----------
    n_samples
        Number of samples (organoids, slides, ...).

    Returns
    -------
    tuple of int
        ``(n_train, n_val, n_test)``, summing to ``n_samples``.

    Raises
    ------
    ValueError
        If ``n_samples`` is smaller than 1.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if n_samples == 1:
        return 1, 0, 0
    if n_samples == 2:
        return 1, 1, 0
    # a quarter, rounded down so that training keeps at least half; at least one sample
    quarter = max(1, n_samples // 4)
    n_test = n_val = quarter
    return n_samples - n_val - n_test, n_val, n_test


def assign_splits(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign whole samples to ``train`` / ``val`` / ``test``, stratified by a grouping.

    Samples are shuffled within each group (e.g. condition) and the groups are interleaved before
    the split is cut, so every split holds a mix of the groups whenever its size allows.

    Parameters
    ----------
    groups
        One label per sample (e.g. its condition); shape ``(n_samples,)``.
    rng
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        One of ``"train"``, ``"val"``, ``"test"`` per sample (object array).
    """
    groups = np.asarray(groups)
    n = groups.shape[0]
    n_train, n_val, n_test = split_counts(n)
    _, codes = np.unique(groups, return_inverse=True)
    # rank of each sample within its (shuffled) group; sorting by rank interleaves the groups
    perm = rng.permutation(n)
    rank = np.empty(n, dtype=np.int64)
    for code in np.unique(codes):  # loop over groups, not samples' cells
        members = perm[codes[perm] == code]
        rank[members] = np.arange(members.size)
    tiebreak = rng.permutation(n)
    order = np.lexsort((tiebreak, rank))
    labels = np.empty(n, dtype=object)
    labels[order[:n_test]] = "test"
    labels[order[n_test : n_test + n_val]] = "val"
    labels[order[n_test + n_val :]] = "train"
    assert (labels == "train").sum() == n_train
    return labels
