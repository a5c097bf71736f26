"""The steps behind ``interscale train`` and ``interscale job``: data, preprocessing, report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from interscale._io import atomic_file, atomic_write_text
from interscale.names import Key

# The job's default config, relative to the repository root (where tox and CI run).
DEFAULT_JOB_CONFIG = "config_files/synthetic_example.yaml"


def _write_json_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True), path)


def _write_h5ad_atomic(adata, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)


def _load_cfg(path: str | None, overrides: dict):
    from interscale.config import load_config, with_overrides

    cfg = load_config(path)
    return with_overrides(cfg, overrides) if overrides else cfg


def _load_or_make_data(cfg, h5ad: str | None, n_samples: int | None, seed: int):
    import anndata as ad

    import interscale as isc

    source = h5ad or cfg.dataset.h5ad_data
    if source:
        adata = ad.read_h5ad(source)
        return adata, str(source)
    kwargs = {"seed": seed}
    if n_samples is not None:
        kwargs["n_samples"] = n_samples
    adata = isc.datasets.synthetic_organoids(**kwargs)
    return adata, "built-in synthetic_organoids"


def _graph_units(cfg) -> list[str]:
    """The obs column(s) naming the graph units: the tiles when the config tiles, else samples."""
    ds = cfg.dataset
    return [ds.tile_key] if ds.tile_max_cells is not None else list(ds.sample_key)


def _tiles_for_one_section(n_cells: int) -> int:
    # a k-d split with this bound gives 16 tiles: enough for a 50/25/25 split with 4 test tiles
    return max(1, -(-n_cells // 16))


def _tile(adata, cfg) -> None:
    """Cut the samples into the config's tiles, or check the tiles the file already holds."""
    import interscale as isc

    ds = cfg.dataset
    sample, key, bound = ds.sample_key[0], ds.tile_key, ds.tile_max_cells
    if key in adata.obs.columns:
        record = adata.uns.get(key)
        written = isinstance(record, dict) and "max_cells" in record
        same = (
            written
            and int(record["max_cells"]) == bound
            and str(record.get("library_key")) == sample
        )
        if not same:
            found = (
                f"tiles of at most {int(record['max_cells'])} cells of obs"
                f"[{record.get('library_key')!r}]"
                if written
                else "a column that interscale.pp.tile did not write"
            )
            raise ValueError(
                f"obs[{key!r}] already exists ({found}), but the config asks for tiles of at "
                f"most {bound} cells of obs[{sample!r}] (dataset.tile_max_cells); drop the "
                "column, or set dataset.tile_key to another name"
            )
        n_tiles = adata.obs[key].nunique()
        print(f"using the stored tiles obs[{key!r}] ({n_tiles} tiles of at most {bound} cells)")
        return
    spatial_key = ds.spatial_neighbors_kwargs.spatial_key
    tiles = isc.pp.tile(adata, bound, sample_key=sample, key_added=key, spatial_key=spatial_key)
    print(
        f"cut obs[{sample!r}] into {tiles.nunique()} tiles of at most {bound} cells "
        f"(obs[{key!r}], dataset.tile_max_cells)"
    )


def _check_enough_units(adata, cfg, unit: str) -> None:
    """Refuse, with the option that fixes it, a file whose samples cannot be split."""
    ds = cfg.dataset
    n_units = int(adata.obs[unit].nunique())
    if n_units >= 2:
        return
    suggestion = _tiles_for_one_section(adata.n_obs)
    if ds.tile_max_cells is not None:
        raise ValueError(
            f"dataset.tile_max_cells={ds.tile_max_cells} leaves the {adata.n_obs} cells in "
            f"{n_units} tile; whole-tile splits need at least two (one to train, one to "
            f"validate) and test tiles to score: lower --tile-max-cells (dataset.tile_max_cells),"
            f" e.g. to {suggestion} for 16 tiles"
        )
    raise ValueError(
        f"obs[{unit!r}] holds a single sample ({adata.n_obs} cells): whole-sample splits need "
        "at least two (one to train, one to validate, and test samples to score). For one "
        f"tissue section, cut it into spatial tiles and split whole tiles: --tile-max-cells N "
        f"(dataset.tile_max_cells: N in a config), e.g. --tile-max-cells {suggestion} for 16 "
        "tiles; or add a split column (--split-key)"
    )


def _preprocess(adata, cfg) -> None:
    """Counts -> QC and normalised layer, tiles, whole-unit split and spatial graph, if missing.

    Each step runs only when its output is absent, so a preprocessed file passes unchanged; the
    config says where the counts are (``dataset.counts_layer``), whether to cut the samples
    into tiles first (``tile_max_cells``, ``tile_key``: the tiles are then the units split and
    the graphs), how to split (``train_size``/``val_size``/``test_size``, ``stratify_group``,
    seed ``optim.seed``) and how to build the graph (``spatial_neighbors_kwargs``, also when
    ``rebuild`` is set).
    """
    import interscale as isc

    ds = cfg.dataset
    kw = ds.spatial_neighbors_kwargs
    layer = ds.layer_key
    if layer and layer not in adata.layers:
        isc.pp.qc(adata, spatial_key=kw.spatial_key, layer=ds.counts_layer)
        isc.pp.normalize(adata, layer=ds.counts_layer, key_added=layer)
        print(f"normalised {adata.uns['normalize']['counts']} into layers[{layer!r}]")
    if ds.tile_max_cells is not None:
        _tile(adata, cfg)
    units = _graph_units(cfg)
    if ds.split_key not in adata.obs.columns:
        if len(units) != 1:
            raise ValueError(
                f"the data has no split column {ds.split_key!r}; add one (train/val/test per "
                "sample), or use a single sample key so that samples can be split"
            )
        _check_enough_units(adata, cfg, units[0])
        fractions = (ds.train_size, ds.val_size, ds.test_size)
        isc.pp.split_samples(
            adata,
            units[0],
            fractions=fractions,
            stratify_key=ds.stratify_group,
            seed=cfg.optim.seed,
            key_added=ds.split_key,
        )
        counts = adata.uns["split_samples"]["n_samples"]
        what = "tiles" if ds.tile_max_cells is not None else "samples"
        print(f"split whole {what} of obs[{units[0]!r}] into {counts}")
        if counts["test"] == 0:
            print(
                f"warning: no test {what}, so no held-out scores; use more {what} or a larger "
                "test share (--split-fractions)"
            )
    key = Key.obsp.spatial_connectivities()
    if key not in adata.obsp or kw.rebuild:
        # the same function the model uses: radius/n_neighs, library_key and spatial_key
        isc.pp.spatial_graph_from_config(adata, cfg, units)
        rule = f"radius {kw.radius}" if kw.radius is not None else f"{kw.n_neighs} nearest cells"
        print(f"built the spatial graph ({rule}, obsm[{kw.spatial_key!r}])")
    else:
        print(f"using the stored graph obsp[{key!r}] (set rebuild: true to build it anew)")


def _own_data_config(args):
    """The tutorial configuration with the command line's description of a user's file."""
    from interscale.config import tutorial_config, with_overrides

    if not args.sample_key:
        raise ValueError(
            "--h5ad without --config needs --sample-key COL (dataset.sample_key: the obs "
            "column naming each sample, e.g. library_id), or --config FILE"
        )
    sample_keys = [k for k in args.sample_key.split(",") if k]
    overrides = {
        "dataset.h5ad_data": str(args.h5ad),
        "dataset.name": Path(args.h5ad).stem,
        "dataset.sample_key": sample_keys,
        "dataset.counts_layer": args.counts_layer,
        # the defaults of interscale.pp.split_samples, used when the file has no split column:
        # a quarter of the samples (or tiles) is test, the only ones held-out scores read
        "dataset.train_size": 0.5,
        "dataset.val_size": 0.25,
        "dataset.test_size": 0.25,
        "dataset.spatial_neighbors_kwargs.library_key": None,
        "model.save": str(args.out),
    }
    if args.radius is not None:
        overrides["dataset.spatial_neighbors_kwargs.radius"] = args.radius
    else:
        # unit-free default: the tutorial's radius gives about 10 neighbours per cell
        overrides["dataset.spatial_neighbors_kwargs.n_neighs"] = args.knn or 10
    return with_overrides(tutorial_config(), overrides)


def _cli_overrides(args) -> dict:
    """Settings the command line changes in any configuration."""
    overrides = {"optim.n_epochs": args.epochs} if args.epochs else {}
    if args.tile_max_cells is not None:
        overrides["dataset.tile_max_cells"] = args.tile_max_cells
    if args.batch_size:
        overrides["dataset.batch_size"] = args.batch_size
    if args.split_key:
        overrides["dataset.split_key"] = args.split_key
    if args.split_fractions:
        try:
            train, val, test = (float(v) for v in args.split_fractions.split(","))
        except ValueError:
            raise ValueError(
                f"--split-fractions must be three comma-separated numbers (train,val,test), "
                f"got {args.split_fractions!r}"
            ) from None
        overrides.update(
            {"dataset.train_size": train, "dataset.val_size": val, "dataset.test_size": test}
        )
    return overrides


def _set_up_model(cfg, h5ad: str | None, n_samples: int | None):
    """Seed, load (or generate) and preprocess the data, set it up and build the model.

    Returns the AnnData, a description of its source, the model and the seconds spent loading.
    """
    import interscale as isc

    if not cfg.dataset.sample_key:
        raise ValueError(
            "the config sets no dataset.sample_key (the obs column(s) naming each sample); "
            "pass --config with a dataset section, e.g. config_files/synthetic_example.yaml"
        )
    isc.tl.set_full_reproducibility(cfg.optim.seed)
    t0 = time.perf_counter()
    adata, source = _load_or_make_data(cfg, h5ad, n_samples, seed=0)
    load_seconds = time.perf_counter() - t0
    _preprocess(adata, cfg)
    isc.model.CombinedModel.setup_anndata(
        adata,
        layer_key=cfg.dataset.layer_key,
        sample_key_list=_graph_units(cfg),
        split_key=cfg.dataset.split_key,
    )
    return adata, source, isc.model.CombinedModel(adata, cfg), load_seconds


def run_job(
    config: str | None = None,
    out: str = "results/job",
    epochs: int | None = None,
    h5ad: str | None = None,
    n_samples: int | None = None,
    accelerator: str | None = None,
    progress_bar: bool = True,
) -> dict:
    """Built-in (or given) dataset -> preprocess -> train -> held-out outputs -> report.

    The report holds the mean per-gene R^2 of each head per split, and the AUROC of the
    Rank Difference for the planted local vs global genes scored on the held-out cells: the
    test samples, which neither training nor early stopping (the validation samples) saw. When
    the AUROC cannot be computed it is None and ``auroc_reason`` says why.
    Returns the report dict, also written to ``<out>/report.json``.
    """
    t_start = time.perf_counter()
    if config is None and Path(DEFAULT_JOB_CONFIG).is_file():
        config = DEFAULT_JOB_CONFIG
    cfg = _load_cfg(config, {"optim.n_epochs": epochs} if epochs else {})
    adata, source, model, data_seconds = _set_up_model(cfg, h5ad, n_samples)
    print(model.summary())
    t_train0 = time.perf_counter()
    model.train(accelerator=accelerator, progress_bar=progress_bar)
    t_train = time.perf_counter() - t_train0
    out_dir = Path(out)
    ckpt = model.save(out_dir, overwrite=True)
    t_inf0 = time.perf_counter()
    model.get_model_output(adata)
    t_inf = time.perf_counter() - t_inf0
    from interscale.evaluation import heldout_r2

    layer = cfg.dataset.layer_key
    split_key = cfg.dataset.split_key
    r2_local = heldout_r2(adata, Key.layers.y_pred("local"), layer, split_key)
    r2_global = heldout_r2(adata, Key.layers.y_pred("global"), layer, split_key)
    report = {
        "data": source,
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "epochs_run": int(len(model.history_)),
        "best_epoch": int(model.best_epoch_),
        "seconds_per_epoch": float(model.history_["seconds"].mean()),
        "train_seconds": t_train,
        "inference_seconds": t_inf,
        "data_seconds": data_seconds,
        "heldout_r2_local": r2_local,
        "heldout_r2_global": r2_global,
        "checkpoint": str(ckpt),
    }
    report.update(_heldout_auroc(adata, cfg.dataset.split_key))
    _write_h5ad_atomic(adata, out_dir / "trained.h5ad")
    report["total_seconds"] = time.perf_counter() - t_start
    _write_json_atomic(report, out_dir / "report.json")
    _print_report(report)
    return report


def _heldout_auroc(adata, split_key: str) -> dict:
    """AUROC of the Rank Difference on the held-out test cells, or why there is none.

    Only the test samples count as held out: the validation samples chose the best epoch.

    Returns the report entries: ``gene_ranks_cells`` and ``gene_ranks_n_cells`` (the scored
    cells), and ``auroc_local_vs_global_genes`` (None when not computed, then with
    ``auroc_reason``).
    """
    out: dict = {"auroc_local_vs_global_genes": None}
    try:
        from interscale.evaluation import auroc_with_reason, calculate_gene_ranks, report_cells
    except ImportError as exc:
        out["auroc_reason"] = f"interscale.evaluation could not be imported: {exc}"
        return out
    try:
        ranks = calculate_gene_ranks(
            adata,
            layers_local_pred=Key.layers.y_pred("local"),
            layers_global_pred=Key.layers.y_pred("global"),
            cells=report_cells(adata, "test", split_key),
            split_key=split_key,
        )
    except (KeyError, ValueError) as exc:
        out["auroc_reason"] = f"no held-out gene ranks: {exc}"
        return out
    out["gene_ranks_cells"] = ranks.attrs["cells"]
    out["gene_ranks_n_cells"] = int(ranks.attrs["n_cells"])
    auroc, reason = auroc_with_reason(ranks, adata.var)
    out["auroc_local_vs_global_genes"] = auroc
    if reason is not None:
        out["auroc_reason"] = reason
    return out


def _print_report(report: dict) -> None:
    print("\nInterScale report")
    size = f"{report['n_cells']} cells, {report['n_genes']} genes"
    print(f"  data              {report['data']} ({size})")
    print(f"  epochs            {report['epochs_run']} (best {report['best_epoch']})")
    print(f"  seconds / epoch   {report['seconds_per_epoch']:.2f}")
    print(f"  inference         {report['inference_seconds']:.1f} s")
    print("  R^2 per split (mean over genes, each cell predicted while masked; held out: test)")
    print(f"    {'split':<8}{'local':>10}{'global':>10}")
    for split in report["heldout_r2_local"]:
        loc = report["heldout_r2_local"][split]
        glo = report["heldout_r2_global"][split]
        print(f"    {split:<8}{loc:>10.4f}{glo:>10.4f}")
    auroc = report.get("auroc_local_vs_global_genes")
    if "gene_ranks_cells" in report:
        print(
            f"  gene ranks scored on {report['gene_ranks_cells']} "
            f"({report['gene_ranks_n_cells']} cells)"
        )
    if auroc is not None:
        print(f"  AUROC of Rank Difference, planted local vs global genes: {auroc:.3f}")
    elif "auroc_reason" in report:
        print(f"  AUROC not computed: {report['auroc_reason']}")
    print(f"  total             {report['total_seconds']:.1f} s")
