"""Command line: ``interscale train|output|evaluate|job`` (also ``python -m interscale``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from interscale._anndata import read_setup
from interscale._io import atomic_file, atomic_write_text
from interscale.names import ACCELERATORS, STRATEGIES, Key

# heldout_r2 is re-exported lazily from interscale.evaluation by __getattr__ below
__all__ = ["main", "run_job", "heldout_r2"]  # noqa: F822

# The job's default config, relative to the repository root (where tox and CI run).
_DEFAULT_JOB_CONFIG = "config_files/synthetic_example.yaml"


def _write_json_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True), path)


def _write_h5ad_atomic(adata, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)


def __getattr__(name: str):
    # `from interscale.cli import heldout_r2` keeps working (notebooks import it from here);
    # the metric lives in interscale.evaluation, imported on first use so that the command
    # line starts without loading the evaluation stack.
    if name == "heldout_r2":
        from interscale.evaluation import heldout_r2

        return heldout_r2
    raise AttributeError(f"module 'interscale.cli' has no attribute {name!r}")


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


def _preprocess(adata, cfg) -> None:
    import interscale as isc

    layer = cfg.dataset.layer_key
    if layer and layer not in adata.layers:
        isc.pp.qc(adata, spatial_key=cfg.dataset.spatial_neighbors_kwargs.spatial_key)
        isc.pp.normalize(adata, key_added=layer)
    if Key.obsp.spatial_connectivities() not in adata.obsp:
        # the same function the model uses: radius/n_neighs, library_key and spatial_key
        isc.pp.spatial_graph_from_config(adata, cfg)


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
    isc.model.CombinedModel._setup_anndata(
        adata,
        layer_key=cfg.dataset.layer_key,
        sample_key_list=list(cfg.dataset.sample_key),
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
    Rank Difference for the planted local vs global genes scored on the held-out (val +
    test) cells; when the AUROC cannot be computed it is None and ``auroc_reason`` says why.
    Returns the report dict, also written to ``<out>/report.json``.
    """
    t_start = time.perf_counter()
    if config is None and Path(_DEFAULT_JOB_CONFIG).is_file():
        config = _DEFAULT_JOB_CONFIG
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
    """AUROC of the Rank Difference on the held-out (val + test) cells, or why there is none.

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
            cells=report_cells(adata, "val,test", split_key),
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
    print("  held-out R^2 (mean over genes, each cell predicted while masked)")
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


def _is_main_process() -> bool:
    """False on the ranks other than 0 of a ``torchrun`` launch (they neither write nor print)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    from interscale.train import env_world

    env = env_world()
    return env is None or env[0] == 0


def _cmd_train(args) -> int:
    if not _is_main_process():
        # the other ranks of a torchrun launch train silently (errors still go to stderr)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            return _train_and_save(args, main=False)
    return _train_and_save(args, main=True)


def _train_and_save(args, main: bool) -> int:
    if args.strategy == "ddp":
        from interscale.train import check_launch

        check_launch()  # before the data is loaded
    overrides = {"optim.n_epochs": args.epochs} if args.epochs else {}
    if args.batch_size:
        overrides["dataset.batch_size"] = args.batch_size
    config = args.config
    if config is None and args.h5ad is None and Path(_DEFAULT_JOB_CONFIG).is_file():
        config = _DEFAULT_JOB_CONFIG  # the built-in data's own config, as for `job`
    cfg = _load_cfg(config, overrides)
    adata, _, model, _ = _set_up_model(cfg, args.h5ad, args.n_samples)
    strategy = None if args.strategy == "auto" else args.strategy
    model.train(accelerator=args.accelerator, progress_bar=not args.quiet, strategy=strategy)
    if not main:
        return 0
    path = model.save(args.out, overwrite=args.overwrite)
    _write_h5ad_atomic(adata, Path(args.out) / "preprocessed.h5ad")
    print(f"saved {path}")
    return 0


def _cmd_output(args) -> int:
    import anndata as ad

    import interscale as isc

    cfg = _load_cfg(args.config, {}) if args.config else None
    adata = ad.read_h5ad(args.h5ad)
    if read_setup(adata) is None:
        raise SystemExit(f"{args.h5ad} is not set up; write it with `interscale train` first")
    model = isc.model.CombinedModel.load(args.checkpoint, adata, cfg)
    model.get_model_output(adata, masked=not args.unmasked)
    out = Path(args.out)
    _write_h5ad_atomic(adata, out)
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args) -> int:
    from interscale.evaluation import evaluate_to_folder

    metrics = evaluate_to_folder(
        args.h5ad,
        args.checkpoint,
        args.out,
        config=args.config,
        cells=args.cells,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    print(f"wrote {args.out} (gene ranks scored on {metrics['cells']})")
    if metrics.get("auroc_rank_difference") is None:
        print(f"AUROC not computed: {metrics.get('auroc_reason')}")
    return 0


def _cmd_job(args) -> int:
    run_job(
        config=args.config,
        out=args.out,
        epochs=args.epochs,
        n_samples=args.n_samples,
        accelerator=args.accelerator,
        progress_bar=not args.quiet,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interscale", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a CombinedModel and save it")
    p.add_argument(
        "--config",
        help="YAML config (default: config_files/synthetic_example.yaml for the built-in data)",
    )
    p.add_argument("--h5ad", help="input AnnData (default: config's h5ad_data or built-in data)")
    p.add_argument("--out", default="results/train", help="output folder")
    p.add_argument("--epochs", type=int, help="override optim.n_epochs")
    p.add_argument(
        "--batch-size",
        type=int,
        dest="batch_size",
        help="override dataset.batch_size (graphs per step; under ddp the global batch)",
    )
    p.add_argument(
        "--n-samples",
        type=int,
        dest="n_samples",
        help="samples of the built-in synthetic data (when no h5ad is given)",
    )
    p.add_argument("--accelerator", choices=list(ACCELERATORS))
    p.add_argument(
        "--strategy",
        choices=["auto", *STRATEGIES],
        default="auto",
        help="single process or DistributedDataParallel (auto: ddp under torchrun)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("output", help="write embeddings and predictions into an AnnData")
    p.add_argument("--h5ad", required=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or folder")
    p.add_argument("--config")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--unmasked", action="store_true", help="unmasked reconstruction")
    p.set_defaults(func=_cmd_output)

    p = sub.add_parser("evaluate", help="gene-level evaluation into tables and figures")
    p.add_argument("--h5ad", required=True, help="trained AnnData (after `output`)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--cells",
        default="val,test",
        help="cells the gene ranks are scored on: split names, comma-separated, or 'all' "
        "(default: val,test, the held-out samples; a missing test split is skipped)",
    )
    p.add_argument(
        "--n-boot",
        type=int,
        default=100,
        dest="n_boot",
        help="bootstrap resamples for the R^2 and Rank Difference intervals (0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("job", help="the main job: built-in data -> train -> outputs -> report")
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--out", default="results/job")
    p.add_argument("--epochs", type=int)
    p.add_argument("--n-samples", type=int, dest="n_samples")
    p.add_argument("--accelerator", choices=list(ACCELERATORS))
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_job)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``interscale`` command."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError) as exc:
        print(f"interscale {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
