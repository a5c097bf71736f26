"""Synthetic neural-tube organoids with planted local and global gene programs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from interscale.datasets._organoid_layout import (
    _ROSETTE_SIZE,
    _ROSETTE_SPACING,
    _add_defects,
    _organoid_section,
    _sample_sizes,
)
from interscale.datasets._organoid_panel import (
    _CELL_TYPES,
    _MARKER_ROLES,
    PROGRAMS,
    _gene_table,
)
from interscale.datasets._split import SPLIT_CATEGORIES, assign_splits

_CONTACT_RADIUS = 200.0
_SENDER_FRACTION = 0.12
_NEURON_FRACTION = 0.35
_CYCLING_FRACTION = 0.3
_ZERO_COUNT_FRACTION = 0.015
_GRADIENT_LENGTH = 0.3  # decay length of the SHH gradient, in units of the organoid's long axis
_SHH_BASE = 0.9  # share of the SHH signal that reaches the whole organoid
# Each cell's SHH pathway is a bistable switch, on with probability lo + (hi - lo) * signal and
# independently of its neighbours: a neighbour's switch is as noisy a reading of the dose as the
# cell's own, so a 2-hop neighbourhood (~13 cells) reads the dose poorly and the whole
# organoid (thousands of cells) reads it well.
_SHH_ON_PROBABILITY = (0.17, 0.83)
_SHH_UP_BASELINE = (0.0, 0.7)
_SHH_DOWN_BASELINE = (0.6, 1.4)
_SHH_EFFECT = (3.0, 3.6)
_BOTH_SHH_EFFECT = (1.8, 2.2)
_LOCAL_EFFECT = (0.8, 0.9)  # log fold of the contact response at saturation
_LOCAL_HALF_SATURATION = (0.4, 0.6)  # sender contacts giving half the response
_LOCAL_BASELINE = (0.6, 0.9)
_GENE_NOISE = 0.25  # sd of independent per-cell, per-gene log-expression noise
_COUNT_SCALE = 2.0  # mean size factor; sets the depth (about 1,000 counts per cell)


def _validate(n_samples, cells_per_sample, n_genes, seed, defects) -> tuple[int, int]:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
        raise TypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer):
        raise TypeError(f"n_genes must be an int, got {type(n_genes).__name__}")
    if n_genes < 1:
        raise ValueError(f"n_genes must be >= 1, got {n_genes}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not isinstance(defects, bool | np.bool_):
        raise TypeError(f"defects must be a bool, got {type(defects).__name__}")
    if isinstance(cells_per_sample, int | np.integer) and not isinstance(cells_per_sample, bool):
        lo = hi = int(cells_per_sample)
    else:
        try:
            lo, hi = (int(v) for v in cells_per_sample)
        except (TypeError, ValueError):
            raise TypeError(
                "cells_per_sample must be an int or a (min, max) pair of ints, "
                f"got {cells_per_sample!r}"
            ) from None
    if lo < 1 or hi < lo:
        raise ValueError(f"cells_per_sample must satisfy 1 <= min <= max, got ({lo}, {hi})")
    return lo, hi


def _gene_parameters(genes: pd.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Baseline, marker, contact and SHH effects of every gene (log scale)."""
    g = len(genes)
    role = genes["role"].to_numpy()
    is_marker = np.isin(role, _MARKER_ROLES)
    local_up = np.isin(role, ("contact", "notch"))
    local_down = role == "contact_down"
    local_full = local_up | local_down
    local_part = np.isin(role, ("both_up", "both_down"))
    shh_up = np.isin(role, ("shh_up", "both_up"))
    shh_down = np.isin(role, ("shh_down", "both_down"))
    # Baselines keep raw counts within a few hundred: induced SHH targets start low, repressed
    # ones start high.
    baseline = rng.uniform(0.3, 1.6, g)
    baseline = np.where(is_marker, rng.uniform(-0.8, 0.2, g), baseline)
    baseline = np.where(local_full, rng.uniform(*_LOCAL_BASELINE, g), baseline)
    baseline = np.where(shh_up, rng.uniform(*_SHH_UP_BASELINE, g), baseline)
    baseline = np.where(shh_down, rng.uniform(*_SHH_DOWN_BASELINE, g), baseline)
    marker_effect = np.where(is_marker, rng.uniform(2.0, 3.0, g), 0.0)
    # contact response on the linear scale: up genes exp(b) * (1 + m * act), down genes
    # exp(b) * (1 + m * (1 - act)); up and down genes come in pairs with equal b, m and K, so
    # a cell's expected total does not depend on its contacts and library-size normalisation
    # does not leak the contact signal into the other genes
    fold = np.where(local_full, np.expm1(rng.uniform(*_LOCAL_EFFECT, g)), 0.0)
    fold = np.where(local_part, np.expm1(rng.uniform(1.0, 1.4, g)), fold)
    # a small half-saturation makes one sender contact give most of the response
    half_saturation = rng.uniform(*_LOCAL_HALF_SATURATION, g)
    up_idx, down_idx = np.flatnonzero(local_up), np.flatnonzero(local_down)
    n_pairs = min(up_idx.size, down_idx.size)
    for arr in (baseline, fold, half_saturation):
        arr[down_idx[:n_pairs]] = arr[up_idx[:n_pairs]]
    global_effect = np.where(
        np.isin(role, ("shh_up", "shh_down")), rng.uniform(*_SHH_EFFECT, g), 0.0
    )
    global_effect = np.where(local_part, rng.uniform(*_BOTH_SHH_EFFECT, g), global_effect)
    global_effect = np.where(shh_down, -global_effect, global_effect)
    # SHH-induced and SHH-repressed genes come in pairs too: the repressed gene starts where
    # the induced one ends and falls by as much, so switching the pathway on leaves a cell's
    # expected total unchanged and normalisation does not spread the switch to other genes
    up_shh = np.flatnonzero(role == "shh_up")
    down_shh = np.flatnonzero(role == "shh_down")
    n_shh_pairs = min(up_shh.size, down_shh.size)
    up_shh, down_shh = up_shh[:n_shh_pairs], down_shh[:n_shh_pairs]
    global_effect[down_shh] = -global_effect[up_shh]
    baseline[down_shh] = baseline[up_shh] + global_effect[up_shh]
    return {
        "baseline": baseline,
        "marker_effect": marker_effect,
        "local_fold": fold,
        "local_down": local_down,
        "half_saturation": half_saturation,
        "global_effect": global_effect,
    }


def synthetic_organoids(
    n_samples: int = 17,
    cells_per_sample: int | tuple[int, int] = (1640, 4318),
    n_genes: int = 88,
    seed: int | None = 0,
    defects: bool = False,
) -> ad.AnnData:
    """Simulate neural-tube organoid sections with known local and global gene programs.

    The defaults mirror the shape of the Legnini et al. (2023) molecular-cartography data used in
    the tutorials (17 organoids, 1,640 to 4,318 cells each, about 43,800 cells, 88 genes of a
    neural-development panel) and add what real data lacks: ground truth about which genes depend
    on a cell's spatial neighbours and which on tissue-scale state.

    Generative model (all draws from one seeded :class:`numpy.random.SeedSequence`):

    1. **Geometry.** Each organoid is a roughly elliptical 2D section (aspect 0.75-1, random
       orientation, a small boundary wobble) made of neural rosettes: compact clusters of 9-14
       cells (sunflower packing, cells about 70-90 apart) whose centres lie on a jittered
       hexagonal lattice of spacing 470. A radius of 200 gives about 10 +- 2 neighbours, as in
       the real data, but few edges between rosettes: a cell's 2-hop neighbourhood is about its
       own rosette (~11 cells), so what the whole tissue shares can only be read from many
       rosettes. Organoids are laid out on a grid, as on a slide.
    2. **Cell types**, drawn independently per cell (salt and pepper, no spatial structure):
       ``sender`` (12 %, a Delta-like signalling cell marked by DLL1, DLL3, ASCL1), ``neuron``
       (35 %, subtypes inhibitory / excitatory / motor) and ``progenitor`` (the rest, 30 % of them
       cycling). Because types carry no spatial structure, a cell's own markers cannot be
       predicted from its neighbours or from its position.
    3. **Contact signalling (local program).** ``gt_sender_contact`` counts a cell's sender
       neighbours within radius 200 (one ring); the activation is ``act = c / (c + K_g)``
       (K_g in 0.4-0.6, so one contact gives most of the response). Immediate-early genes (FOS,
       FOSB, JUNB, ARC, EGR1, EGR2, NR4A1, NPAS4, IER2, DUSP1) and Notch targets (HEY1, HES5)
       rise as ``exp(b) * (1 + m * act)`` (about 2.2-2.5 fold at saturation); twelve
       contact-repressed genes (ATOH1, GATA2, GATA3, LHX2, EN1, EVX1, ARX, BMP4, WNT1, LMX1A,
       TAL1, JAG1, as in lateral inhibition) fall as ``exp(b) * (1 + m * (1 - act))``. Up and
       down genes come in pairs with equal ``b, m, K``, so a cell's total count does not depend
       on its contacts and library-size normalisation does not leak the contact signal into
       other genes. The signal is sharp: adjacent cells can differ completely, and it has no
       sample-level component. Effects are kept in a narrow range so that the local genes are
       about as predictable as the global ones: Rank Difference can only separate the programs
       when the heads reorder them.
    4. **Morphogen (global program).** Each organoid has a dose ``D`` (``gt_dose``): SHH condition
       U(0.6, 1.0), Control U(0, 0.2). An SHH source sits at one pole; ``gt_gradient`` =
       ``exp(-d / (0.3 L))`` with ``d`` the distance to the source and ``L`` the long axis. The
       smooth signal is ``gt_shh_signal = D * (0.9 + 0.1 * gt_gradient)``: organoid-wide, with a
       weak ventral-dorsal gradient on top. Each cell's SHH pathway is a bistable switch, on
       with probability ``0.17 + 0.66 * gt_shh_signal``, independently of its neighbours; all
       SHH targets of a cell follow its switch (effect 3.0-3.6 on the log scale). A neighbour's
       switch is therefore as noisy a reading of the dose as the cell's own: a rosette (~11
       cells) estimates the organoid's dose poorly, thousands of cells estimate it well. Targets
       rise (SHH, PTCH1, PTCH2, GLI1, HHIP, NKX2.2, NKX6.1, NKX6.2, FOXA1, FOXA2, OLIG2) or
       fall (PAX3, PAX6, PAX7, IRX3, DBX2, GLI3, MSX1, OLIG3); each falling gene is paired with
       a rising one (it starts where the rising gene ends and falls by as much), so the switch
       leaves a cell's expected total unchanged and normalisation does not spread it.
    5. **Both.** NEUROG2, HES6, HES1 (up) and DBX1 (down with SHH) carry a weaker contact term
       and a weaker SHH-switch term (effect 1.8-2.2).
    6. **None.** Every other gene depends only on the cell's own type / subtype / cycling state
       (markers such as SOX2, MAP2, TUBB3, STMN2, VAMP2, GAD1, CHAT, ISL1, MNX1) or on nothing
       (PER2, GLI2). Caveat: the sender markers (DLL1, DLL3, ASCL1) are cell-intrinsic, yet a
       model can partly infer them from the neighbours' contact response (all neighbours of a
       sender are touched); ``var["gt_role"] == "sender"`` singles them out.
    7. **Counts.** log mean = baseline + marker + contact + SHH terms + N(0, 0.25) per cell and
       gene; counts are Poisson with a cell size factor that follows ``Area`` (log-normal) and a
       per-organoid scale. 1.5 % of the cells are tiny debris with a size factor of 0, giving rows
       of exact zeros.

    What each scale can reveal, measured with :func:`interscale.tl.linear_baselines` on the
    default dataset (seed 0, ``pp.qc``, ``pp.normalize``, radius 200, hops (1, 2); mean
    held-out R^2 per program, fitted on the 9 training organoids, scored on the 4 test
    organoids, ``heldout=("test",)``)::

        program   mean    hop1   hop2   sample  hop2_sample
        local    -0.001  0.160  0.161   0.004   0.162
        global   -0.023  0.066  0.068   0.112   0.111
        both     -0.015  0.147  0.148   0.078   0.181
        none     -0.000  0.011  0.012   0.001   0.012

    The organoid mean beats the 2-hop neighbourhood on global genes by 0.044 (hop2 = 0.61 x
    sample; dataset seeds 1 and 2: 0.046 / 0.70 and 0.054 / 0.60); local genes gain nothing
    from the organoid. The margin has a ceiling: when a gene depends on a sample-level factor
    through cells that are exchangeable given that factor, ``m`` neighbours of the same gene
    already give a linear predictor ``m c / (m c + 1 - c)`` of the R^2 ``c`` that the sample
    gives, so the gap is at most ``c (1 - c) / (m c + 1 - c)``. With ``m`` about 30 (the 2-hop
    neighbourhood of a uniform tissue) that stays below 0.02 whatever the mechanism; rosettes
    bring ``m`` to about 11.

    Genes beyond the 88 named ones get names ``SYN001``, ... and a random role; with fewer genes,
    the panel is cut in priority order (the named genes of the issue first, then DLL1, DLL3, ...).

    Parameters
    ----------
    n_samples
        Number of organoids.
    cells_per_sample
        Either a fixed number of cells per organoid or a ``(min, max)`` range; with a range, the
        smallest organoid has ``min`` and the largest ``max`` cells (for ``n_samples >= 2``) and
        the mean sits 35 % of the way between them.
    n_genes
        Number of genes.
    seed
        Seed of every random draw; the same seed gives an identical AnnData. ``None`` draws fresh
        entropy.
    defects
        If True, add a few cells with NaN coordinates, duplicated obs names and extra zero-count
        cells (listed in ``uns["ground_truth"]["defects"]``) to exercise
        :func:`interscale.pp.qc`.

    Returns
    -------
    anndata.AnnData
        ``X`` and ``layers["raw"]``: CSR float32 counts. ``obs``: ``Cell``, ``Area``, ``x``, ``y``,
        ``sample`` (``organoid_01``, ...), ``condition`` (Control / SHH), ``organoid`` (int),
        ``split`` (train / val / test by whole organoids, about 50 / 25 / 25 %, stratified by
        condition) and the ground-truth latents ``gt_cell_type``, ``gt_sender_contact``,
        ``gt_gradient``, ``gt_dose``, ``gt_shh_signal``. ``obsm["spatial"]``: float64 ``(n, 2)``.
        ``var``: ``program`` (local / global / both / none), ``gt_role``, ``gt_local_effect``,
        ``gt_global_effect``. ``uns["ground_truth"]``: parameters, per-organoid doses and source
        positions, and the gene lists per program (all h5ad-serialisable).

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``n_samples``, ``n_genes`` or ``cells_per_sample`` is out of range, or ``seed`` is
        negative.
    """
    lo, hi = _validate(n_samples, cells_per_sample, n_genes, seed, defects)
    n_samples = int(n_samples)
    n_genes = int(n_genes)
    root = np.random.SeedSequence(seed)
    rng_layout, rng_types, rng_genes, rng_expr, rng_defects = (
        np.random.default_rng(s) for s in root.spawn(5)
    )
    seed_used = int(root.entropy) if seed is None else int(seed)

    # ---- samples --------------------------------------------------------------------------
    sizes = _sample_sizes(n_samples, lo, hi, rng_layout)
    n_total = int(sizes.sum())
    n_shh = (n_samples + 1) // 2
    condition = rng_layout.permutation(
        np.array(["SHH"] * n_shh + ["Control"] * (n_samples - n_shh))
    )
    dose = np.where(
        condition == "SHH",
        rng_layout.uniform(0.6, 1.0, n_samples),
        rng_layout.uniform(0.0, 0.2, n_samples),
    )
    split = assign_splits(condition, rng_layout)
    width = max(2, len(str(n_samples)))
    sample_names = np.array([f"organoid_{i + 1:0{width}d}" for i in range(n_samples)])
    sample_scale = rng_layout.uniform(0.85, 1.15, n_samples)
    sample_of_cell = np.repeat(np.arange(n_samples), sizes)

    # ---- cell-intrinsic state (independent of position) -------------------------------------
    zero_count = np.zeros(n_total, dtype=bool)
    zero_count[
        rng_types.choice(n_total, int(round(_ZERO_COUNT_FRACTION * n_total)), replace=False)
    ] = True
    u = rng_types.random(n_total)
    cell_type = np.where(
        (u < _SENDER_FRACTION) & ~zero_count,
        2,
        np.where(u < _SENDER_FRACTION + _NEURON_FRACTION, 1, 0),
    )
    subtype = rng_types.choice(3, size=n_total, p=[0.3, 0.4, 0.3])
    cycling = (cell_type == 0) & (rng_types.random(n_total) < _CYCLING_FRACTION)
    log_area = rng_types.normal(np.log(5000.0), 0.25, n_total)
    size_factor = np.exp(0.9 * (log_area - np.log(5000.0)) + rng_types.normal(0.0, 0.2, n_total))
    size_factor *= _COUNT_SCALE * sample_scale[sample_of_cell]
    size_factor[zero_count] = 0.0
    log_area[zero_count] -= np.log(4.0)  # debris: tiny segments

    # ---- geometry, contacts and gradient, one organoid at a time ------------------------------
    coords = np.empty((n_total, 2))
    contact = np.zeros(n_total, dtype=np.int64)
    gradient = np.empty(n_total)
    n_cols = int(np.ceil(np.sqrt(n_samples)))
    density = 0.5 * sum(_ROSETTE_SIZE) / (np.sqrt(3.0) / 2.0 * _ROSETTE_SPACING**2)
    pitch = 2.6 * np.sqrt(hi / density / np.pi / 0.75) + 1000
    source_xy = np.empty((n_samples, 2))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    is_sender = cell_type == 2
    for s in range(n_samples):
        sl = slice(starts[s], starts[s + 1])
        pts, a, b = _organoid_section(int(sizes[s]), rng_layout)
        pole = rng_layout.uniform(0.0, 2 * np.pi)
        src = np.array([a * np.cos(pole), b * np.sin(pole)])
        gradient[sl] = np.exp(-np.linalg.norm(pts - src, axis=1) / (_GRADIENT_LENGTH * 2 * a))
        pairs = cKDTree(pts).query_pairs(_CONTACT_RADIUS, output_type="ndarray")
        snd = is_sender[sl]
        n_s = int(sizes[s])
        contact[sl] = np.bincount(pairs[:, 0], weights=snd[pairs[:, 1]], minlength=n_s).astype(
            np.int64
        ) + np.bincount(pairs[:, 1], weights=snd[pairs[:, 0]], minlength=n_s).astype(np.int64)
        rot = rng_layout.uniform(0.0, 2 * np.pi)
        rmat = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
        offset = np.array([(s % n_cols) * pitch, (s // n_cols) * pitch]) + pitch / 2
        coords[sl] = pts @ rmat.T + offset
        source_xy[s] = src @ rmat.T + offset

    # ---- expression --------------------------------------------------------------------------
    genes = _gene_table(n_genes, rng_genes)
    par = _gene_parameters(genes, rng_genes)
    role = genes["role"].to_numpy()
    marker_of = np.zeros((n_total, n_genes), dtype=bool)
    for r, mask in (
        ("sender", cell_type == 2),
        ("neuron", cell_type == 1),
        ("progenitor", cell_type == 0),
        ("cycling", cycling),
        ("inhibitory", (cell_type == 1) & (subtype == 0)),
        ("excitatory", (cell_type == 1) & (subtype == 1)),
        ("motor", (cell_type == 1) & (subtype == 2)),
    ):
        cols = role == r
        if cols.any():
            marker_of[:, cols] = mask[:, None]
    shh_signal = dose[sample_of_cell] * (_SHH_BASE + (1.0 - _SHH_BASE) * gradient)
    lo_on, hi_on = _SHH_ON_PROBABILITY
    shh_state = (rng_expr.random(n_total) < lo_on + (hi_on - lo_on) * shh_signal).astype(float)
    c = contact[:, None].astype(float)
    act = c / (c + par["half_saturation"][None, :])
    act = np.where(par["local_down"][None, :], 1.0 - act, act)
    log_mu = (
        par["baseline"][None, :]
        + marker_of * par["marker_effect"][None, :]
        + np.log1p(par["local_fold"][None, :] * act)
        + par["global_effect"][None, :] * shh_state[:, None]
        + rng_expr.normal(0.0, _GENE_NOISE, (n_total, n_genes))
    )
    counts = rng_expr.poisson(size_factor[:, None] * np.exp(log_mu)).astype(np.float32)

    # ---- assemble ----------------------------------------------------------------------------
    cell_idx = np.arange(n_total) - starts[sample_of_cell] + 1
    cell_ids = np.char.add(
        np.char.add(sample_names[sample_of_cell].astype(str), "_cell"),
        np.char.zfill(cell_idx.astype(str), len(str(int(sizes.max())))),
    ).astype(object)
    obs = pd.DataFrame(
        {
            "Cell": cell_ids,
            "Area": np.exp(log_area),
            "x": coords[:, 0],
            "y": coords[:, 1],
            "sample": pd.Categorical(sample_names[sample_of_cell], categories=sample_names),
            "condition": pd.Categorical(condition[sample_of_cell], categories=["Control", "SHH"]),
            "organoid": (sample_of_cell + 1).astype(np.int64),
            "split": pd.Categorical(split[sample_of_cell], categories=SPLIT_CATEGORIES),
            "gt_cell_type": pd.Categorical(
                np.array(_CELL_TYPES, dtype=object)[cell_type], categories=_CELL_TYPES
            ),
            "gt_sender_contact": contact,
            "gt_gradient": gradient,
            "gt_dose": dose[sample_of_cell],
            "gt_shh_signal": shh_signal,
        },
        index=pd.Index(cell_ids.astype(str)),
    )
    var = pd.DataFrame(
        {
            "program": pd.Categorical(genes["program"].to_numpy(), categories=PROGRAMS),
            "gt_role": genes["role"].to_numpy(),
            "gt_local_effect": np.where(par["local_down"], -1.0, 1.0) * np.log1p(par["local_fold"]),
            "gt_global_effect": par["global_effect"],
        },
        index=genes.index.copy(),
    )
    x = sp.csr_matrix(counts)
    ground_truth = {
        "generator": "interscale.datasets.synthetic_organoids",
        "seed": seed_used,
        "n_samples": n_samples,
        "cells_per_sample": [lo, hi],
        "n_genes": n_genes,
        "contact_radius": _CONTACT_RADIUS,
        "sender_fraction": _SENDER_FRACTION,
        "neuron_fraction": _NEURON_FRACTION,
        "zero_count_fraction": _ZERO_COUNT_FRACTION,
        "gradient_length": _GRADIENT_LENGTH,
        "shh_base": _SHH_BASE,
        "shh_on_probability": list(_SHH_ON_PROBABILITY),
        "gene_noise": _GENE_NOISE,
        "rosette_spacing": _ROSETTE_SPACING,
        "rosette_size": list(_ROSETTE_SIZE),
        "dose": {str(k): float(v) for k, v in zip(sample_names, dose, strict=True)},
        "condition": {str(k): str(v) for k, v in zip(sample_names, condition, strict=True)},
        "source_position": {
            str(k): [float(v[0]), float(v[1])] for k, v in zip(sample_names, source_xy, strict=True)
        },
        "programs": {p: [str(g) for g in genes.index[genes["program"] == p]] for p in PROGRAMS},
        "sender_markers": [str(g) for g in genes.index[role == "sender"]],
        "defects": {},
    }
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.layers["raw"] = x.copy()
    adata.obsm["spatial"] = coords
    adata.uns["ground_truth"] = ground_truth
    if defects:
        _add_defects(adata, rng_defects)
    return adata
