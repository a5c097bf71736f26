"""Which genes a head can be said to drive, the printed summary, and the AUROC of the
Rank Difference against planted programs."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from interscale.names import HEADS

__all__ = ["auroc_rank_difference", "driven_genes", "driven_genes_vs_floor", "floor_of"]


def floor_of(columns: Any, which: str) -> str:
    """The linear floor a head is read against: the ridge on the averages of its own scale.

    ``"local"``: the ``hop{k}`` column with the largest ``k`` (neighbourhood means);
    ``"global"``: the ``hop{k}_sample`` column with the largest ``k`` (neighbourhood and
    sample means, everything the Transformer sees that a ridge can use).

    Parameters
    ----------
    columns
        Columns of a :func:`interscale.evaluation.linear_baselines` table.
    which
        ``"local"`` or ``"global"``.

    Returns
    -------
    str
        The column name.

    Raises
    ------
    ValueError
        ``which`` is not ``"local"``/``"global"``.
    KeyError
        No column of that form.
    """
    if which not in HEADS:
        raise ValueError(f"floor_of: which must be 'local' or 'global', got {which!r}")
    pattern, example = (
        (r"hop(\d+)", "hop2") if which == "local" else (r"hop(\d+)_sample", "hop2_sample")
    )
    found = [(int(m.group(1)), str(c)) for c in columns if (m := re.fullmatch(pattern, str(c)))]
    if not found:
        raise KeyError(
            f"floor_of: no {which} floor: the baselines have no column like {example!r} "
            f"(got {[str(c) for c in columns]})"
        )
    return max(found)[1]


def _floor_values(
    df: pd.DataFrame, baselines: pd.DataFrame, which: str, floor: str | None, what: str
) -> tuple[str, np.ndarray]:
    """(floor name, floor R^2 on each row of ``df``), genes matched by name."""
    if not isinstance(baselines, pd.DataFrame):
        raise TypeError(
            f"{what}: baselines must be a DataFrame from linear_baselines, "
            f"got {type(baselines).__name__}"
        )
    name = floor_of(baselines.columns, which) if floor is None else str(floor)
    if name not in baselines.columns:
        raise KeyError(
            f"{what}: baselines has no column {name!r} (columns: {list(baselines.columns)})"
        )
    column = baselines[name].set_axis(baselines.index.astype(str), axis=0)
    if column.index.has_duplicates:
        raise ValueError(f"{what}: baselines has duplicated genes")
    genes = pd.Index(df["gene"].astype(str))
    missing = genes[~genes.isin(column.index)].unique()
    if len(missing):
        raise KeyError(
            f"{what}: {len(missing)} gene(s) of df are not in baselines: {list(missing[:10])}"
        )
    return name, pd.to_numeric(column, errors="coerce").loc[genes].to_numpy(dtype=np.float64)


def _claim_masks(
    df: pd.DataFrame, which: str, margin: float, require_interval: bool
) -> dict[str, Any]:
    """Masks behind :func:`driven_genes`: direction, R^2 floor and the interval condition."""
    diff = df["Rank Difference"].to_numpy(dtype=np.float64)
    sign = 1.0 if which == "local" else -1.0
    lo_col = f"r2_{which}_lo"
    with np.errstate(invalid="ignore"):
        direction = sign * diff > 0
        if lo_col in df.columns:
            floor = df[lo_col].to_numpy(dtype=np.float64) > 0
            floor_text = f"{lo_col} > 0"
        else:
            floor = df[f"r2_{which}"].to_numpy(dtype=np.float64) > margin
            floor_text = f"r2_{which} > {margin:g}"
        bound = "rank_difference_lo" if which == "local" else "rank_difference_hi"
        if require_interval and bound in df.columns:
            interval = sign * df[bound].to_numpy(dtype=np.float64) > 0
            interval_text = f"{bound} {'>' if which == 'local' else '<'} 0"
        else:
            interval = np.ones(len(df), dtype=bool)
            interval_text = None
    return {
        "direction": direction,
        "floor": floor,
        "interval": interval,
        "floor_text": floor_text,
        "interval_text": interval_text,
    }


def driven_genes(
    df: pd.DataFrame,
    *,
    which: str = "local",
    n: int | None = None,
    margin: float = 0.01,
    require_interval: bool = True,
    baselines: pd.DataFrame | None = None,
    floor: str | None = None,
) -> list[str]:
    """Genes that can be claimed as local-driven or global-driven, strongest first.

    A gene is claimed for a head when all of these hold:

    1. it lies on that head's side: ``Rank Difference`` > 0 for ``"local"``, < 0 for
       ``"global"``;
    2. the head clears the mean-predictor floor: its ``r2_<which>`` > ``margin``, or, when
       the table has bootstrap columns, the lower bound ``r2_<which>_lo`` > 0 (a head that
       does not beat predicting each gene's mean has learned nothing about the gene, so a
       rank gap on it means nothing);
    3. with bootstrap columns and ``require_interval``, the Rank Difference interval
       excludes 0 on that side: ``rank_difference_lo`` > 0 for ``"local"``,
       ``rank_difference_hi`` < 0 for ``"global"``.

    4. with ``baselines``, the head beats its linear floor on the gene: ``r2_<which>`` >
       the floor's held-out R^2 (a rank gap between two heads that both lose to a ridge on
       the averages they see is no evidence that either scale drives the gene). To report
       the claims of 1-3 with the floor and whether each beat it, use
       :func:`driven_genes_vs_floor`.

    A NaN in any column used never passes.

    Parameters
    ----------
    df
        Output of :func:`calculate_gene_ranks` (with or without bootstrap columns).
    which
        ``"local"`` or ``"global"``.
    n
        Return at most this many genes (None: all claimed genes).
    margin
        R^2 floor used without bootstrap columns.
    require_interval
        Require the Rank Difference interval to exclude 0 (when the columns exist).
    baselines
        Output of :func:`linear_baselines` scored on the same cells as ``df`` (indexed by
        gene); None: no floor condition.
    floor
        Column of ``baselines`` to beat (default: :func:`floor_of` the head).

    Returns
    -------
    list of str
        Claimed genes sorted by ``Rank Difference``: descending for ``"local"``, ascending
        for ``"global"`` (ties keep the table order).

    Raises
    ------
    KeyError
        ``df`` lacks ``gene``, ``Rank Difference`` or ``r2_<which>``; ``baselines`` lacks
        the floor column or a gene of ``df``.
    ValueError
        ``which`` is not ``"local"``/``"global"``, ``n`` < 0, ``margin`` is not finite or
        ``baselines`` has duplicated genes.
    TypeError
        ``baselines`` is not a DataFrame.
    """
    what = "driven_genes"
    _check_claim_args(df, which, n, margin, what)
    masks = _claim_masks(df, which, float(margin), require_interval)
    keep = masks["direction"] & masks["floor"] & masks["interval"]
    if baselines is not None:
        _, floor_r2 = _floor_values(df, baselines, which, floor, what)
        with np.errstate(invalid="ignore"):
            keep &= df[f"r2_{which}"].to_numpy(dtype=np.float64) > floor_r2
    return [str(g) for g in df["gene"].to_numpy()[_strongest(df, keep, which, n)]]


def _strongest(df: pd.DataFrame, keep: np.ndarray, which: str, n: int | None) -> np.ndarray:
    """Positions of the kept rows, by Rank Difference (descending for local), ties in order."""
    rows = np.flatnonzero(keep)
    diff = df["Rank Difference"].to_numpy(dtype=np.float64)[rows]
    rows = rows[np.argsort(diff if which == "global" else -diff, kind="stable")]
    return rows if n is None else rows[: int(n)]


def _check_claim_args(df: pd.DataFrame, which: str, n: Any, margin: Any, what: str) -> None:
    if which not in HEADS:
        raise ValueError(f"{what}: which must be 'local' or 'global', got {which!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0):
        raise ValueError(f"{what}: n must be None or an integer >= 0, got {n!r}")
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not np.isfinite(margin):
        raise ValueError(f"{what}: margin must be a finite number, got {margin!r}")
    for col in ("gene", "Rank Difference", f"r2_{which}"):
        if col not in df.columns:
            raise KeyError(f"{what}: df has no column {col!r}")


def driven_genes_vs_floor(
    df: pd.DataFrame,
    baselines: pd.DataFrame,
    *,
    which: str = "local",
    floor: str | None = None,
    n: int | None = None,
    margin: float = 0.01,
    require_interval: bool = True,
) -> pd.DataFrame:
    """The claimed genes of a head, each with the linear floor it was read against.

    The genes are those of :func:`driven_genes` without a floor condition (same order);
    each row says which ridge floor the head was compared with on that gene and whether the
    head beat it, so a claim is never reported without its floor. ``driven_genes(df, ...,
    baselines=baselines)`` keeps the rows with ``beats_floor`` true.

    Parameters
    ----------
    df
        Output of :func:`calculate_gene_ranks`.
    baselines
        Output of :func:`linear_baselines` on the same scored cells (indexed by gene).
    which
        ``"local"`` or ``"global"``.
    floor
        Column of ``baselines`` (default: :func:`floor_of` the head: ``hop{K}`` for the
        local head, ``hop{K}_sample`` for the global head).
    n, margin, require_interval
        As in :func:`driven_genes`.

    Returns
    -------
    pandas.DataFrame
        Columns ``gene``, ``Rank Difference``, ``r2`` (the head's), ``floor`` (the column
        name), ``r2_floor``, ``beats_floor`` (``r2 > r2_floor``; False where either is NaN).

    Raises
    ------
    KeyError, ValueError, TypeError
        As :func:`driven_genes` with ``baselines``.
    """
    what = "driven_genes_vs_floor"
    _check_claim_args(df, which, n, margin, what)
    name, floor_r2 = _floor_values(df, baselines, which, floor, what)
    masks = _claim_masks(df, which, float(margin), require_interval)
    keep = masks["direction"] & masks["floor"] & masks["interval"]
    rows = _strongest(df, keep, which, n)
    r2 = df[f"r2_{which}"].to_numpy(dtype=np.float64)[rows]
    with np.errstate(invalid="ignore"):
        beats = r2 > floor_r2[rows]
    return pd.DataFrame(
        {
            "gene": df["gene"].astype(str).to_numpy()[rows],
            "Rank Difference": df["Rank Difference"].to_numpy(dtype=np.float64)[rows],
            "r2": r2,
            "floor": name,
            "r2_floor": floor_r2[rows],
            "beats_floor": beats,
        }
    )


def _claim_summary(df: pd.DataFrame, which: str, margin: float = 0.01) -> dict[str, Any]:
    """Counts of the genes on a head's side, claimed, and dropped by floor or interval."""
    masks = _claim_masks(df, which, margin, True)
    side = masks["direction"]
    below = side & ~masks["floor"]
    crossing = side & masks["floor"] & ~masks["interval"]
    return {
        "n_side": int(side.sum()),
        "n_claimed": int((side & masks["floor"] & masks["interval"]).sum()),
        "n_below_floor": int(below.sum()),
        "n_interval_includes_0": int(crossing.sum()),
        "floor": masks["floor_text"],
        "interval": masks["interval_text"],
    }


def _describe_cells(df: pd.DataFrame, n_obs: int | None = None) -> str:
    label = df.attrs.get("cells", "all")
    n_cells = df.attrs.get("n_cells")
    if n_cells is None:
        return str(label)
    total = f" of {n_obs}" if n_obs is not None else ""
    text = f"{label} ({n_cells}{total} cells)"
    boot = df.attrs.get("bootstrap")
    if boot:
        text += (
            f"; {boot['n_boot']} bootstrap resamples of {boot['n_units']} {boot['unit']}, "
            f"{100 * boot['ci']:g}% percentile intervals"
        )
    return text


def _print_top(df: pd.DataFrame, top_n: int, n_obs: int | None = None) -> None:
    print(f"Scored cells: {_describe_cells(df, n_obs)}")
    cols = ["gene", "Local Rank", "Global Rank", "Rank Difference", "r2_local", "r2_global"]
    cols += [c for c in ("rank_difference_lo", "rank_difference_hi") if c in df.columns]
    by_gene = df.drop_duplicates("gene").set_index("gene", drop=False)
    for which, title in (
        ("local", "Local-Driven Genes (Local Rank >> Global Rank)"),
        ("global", "Global-Driven Genes (Global Rank >> Local Rank)"),
    ):
        genes = driven_genes(df, which=which, n=top_n)
        info = _claim_summary(df, which)
        rule = info["floor"] + (f" and {info['interval']}" if info["interval"] else "")
        sign = ">" if which == "local" else "<"
        dropped = info["n_side"] - info["n_claimed"]
        reasons = f"{info['n_below_floor']} fail {info['floor']}: no better than the mean"
        if info["interval"]:
            reasons += f"; {info['n_interval_includes_0']} more fail {info['interval']}"
        print(f"\nTop {top_n} {title}:")
        print(
            f"claimed if {rule}. Of the {info['n_side']} genes with Rank Difference {sign} 0, "
            f"{info['n_claimed']} are claimed and {dropped} dropped ({reasons})."
        )
        if genes:
            print(by_gene.loc[genes, cols].reset_index(drop=True).to_string())
        else:
            print("(no gene claimed)")
    best = df.nlargest(top_n, "Avg Rank")
    print(f"\nTop {top_n} Best Predicted Genes (highest Avg Rank):\n{best[cols].to_string()}")


def auroc_rank_difference(
    df: pd.DataFrame,
    programs: pd.Series,
    positive: str = "local",
    negative: str = "global",
) -> float:
    """AUROC of ``Rank Difference`` separating ``positive`` from ``negative`` program genes.

    With the default labels this is the probability that a randomly drawn planted local gene
    has a larger Rank Difference (is more local-driven) than a randomly drawn planted global
    gene, ties counting one half (Mann-Whitney U / (n_pos * n_neg)).

    Parameters
    ----------
    df
        Output of :func:`calculate_gene_ranks` (columns ``gene`` and ``Rank Difference``).
    programs
        Program label per gene, indexed by gene name. Genes whose label is neither
        ``positive`` nor ``negative`` (or that are missing from ``programs``) are ignored.
    positive
        Label of the genes expected to have a large Rank Difference.
    negative
        Label of the genes expected to have a small Rank Difference.

    Returns
    -------
    float
        AUROC in [0, 1]; 0.5 means no separation.

    Raises
    ------
    KeyError
        ``df`` lacks a required column.
    TypeError
        ``programs`` is not a pandas Series.
    ValueError
        No gene of ``df`` carries the positive or the negative label, or a Rank Difference
        used is not finite.
    """
    for col in ("gene", "Rank Difference"):
        if col not in df.columns:
            raise KeyError(f"auroc_rank_difference: df has no column {col!r}")
    if not isinstance(programs, pd.Series):
        raise TypeError(
            f"auroc_rank_difference: programs must be a pandas Series indexed by gene, "
            f"got {type(programs).__name__}"
        )
    if positive == negative:
        raise ValueError("auroc_rank_difference: positive and negative labels must differ")
    if not programs.index.is_unique:
        raise ValueError("auroc_rank_difference: programs has duplicated gene names")
    labels = programs.reindex(pd.Index(df["gene"].astype(str))).to_numpy()
    score = df["Rank Difference"].to_numpy(dtype=np.float64)
    pos, neg = labels == positive, labels == negative
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"auroc_rank_difference: need genes of both classes, found {n_pos} labelled "
            f"{positive!r} and {n_neg} labelled {negative!r} among df['gene']"
        )
    pooled = np.concatenate([score[pos], score[neg]])
    if not np.isfinite(pooled).all():
        raise ValueError("auroc_rank_difference: Rank Difference has non-finite values")
    ranks = rankdata(pooled, method="average")
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
