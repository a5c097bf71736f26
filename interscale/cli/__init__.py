"""Command line: ``interscale train|output|evaluate|job`` (also ``python -m interscale``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from interscale._anndata import read_setup
from interscale.cli._pipeline import (
    DEFAULT_JOB_CONFIG,
    _cli_overrides,
    _heldout_auroc,  # noqa: F401 - importable from interscale.cli, as before the split
    _load_cfg,
    _own_data_config,
    _print_report,  # noqa: F401 - importable from interscale.cli, as before the split
    _set_up_model,
    _write_h5ad_atomic,
    run_job,
)
from interscale.names import ACCELERATORS, PREDICTION_MODES, STRATEGIES

# heldout_r2 is re-exported lazily from interscale.evaluation by __getattr__ below
__all__ = ["main", "run_job", "heldout_r2"]  # noqa: F822

_DEFAULT_JOB_CONFIG = DEFAULT_JOB_CONFIG  # the name before the split into modules


def __getattr__(name: str):
    # `from interscale.cli import heldout_r2` keeps working (notebooks import it from here);
    # the metric lives in interscale.evaluation, imported on first use so that the command
    # line starts without loading the evaluation stack.
    if name == "heldout_r2":
        from interscale.evaluation import heldout_r2

        return heldout_r2
    raise AttributeError(f"module 'interscale.cli' has no attribute {name!r}")


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
    from interscale.config import save_config, with_overrides

    if args.strategy == "ddp":
        from interscale.train import check_launch

        check_launch()  # before the data is loaded
    config = args.config
    if config is None and args.h5ad is not None:
        cfg = _own_data_config(args)
    else:
        if config is None and Path(DEFAULT_JOB_CONFIG).is_file():
            config = DEFAULT_JOB_CONFIG  # the built-in data's own config, as for `job`
        cfg = _load_cfg(config, {})
        if args.h5ad is not None:
            cfg = with_overrides(cfg, {"dataset.h5ad_data": str(args.h5ad)})
    overrides = _cli_overrides(args)
    cfg = with_overrides(cfg, overrides) if overrides else cfg
    adata, _, model, _ = _set_up_model(cfg, args.h5ad, args.n_samples)
    if main:
        print(model.summary())
    strategy = None if args.strategy == "auto" else args.strategy
    model.train(accelerator=args.accelerator, progress_bar=not args.quiet, strategy=strategy)
    if not main:
        return 0
    path = model.save(args.out, overwrite=args.overwrite)
    _write_h5ad_atomic(adata, Path(args.out) / "preprocessed.h5ad")
    config_path = save_config(cfg, Path(args.out) / "config.yaml")
    print(f"saved {path}")
    print(f"repeat this run with: interscale train --config {config_path} --out {args.out}")
    return 0


def _run_folder(args, h5ad_name: str, out_name: str) -> tuple[Path, Path, str | None]:
    """The input h5ad, the output path and the config of a command on a training folder.

    ``interscale train --out DIR`` leaves ``DIR/preprocessed.h5ad`` and ``DIR/config.yaml`` next
    to the model; ``output`` and ``evaluate`` given ``--checkpoint DIR`` find them there.
    """
    folder = Path(args.checkpoint)
    folder = folder if folder.is_dir() else folder.parent
    h5ad = Path(args.h5ad) if args.h5ad else folder / h5ad_name
    out = Path(args.out) if args.out else folder / out_name
    config = args.config
    if config is None and (folder / "config.yaml").is_file():
        config = str(folder / "config.yaml")
    if not h5ad.is_file():
        raise FileNotFoundError(
            f"h5ad file not found: {h5ad}" + ("" if args.h5ad else " (pass --h5ad FILE)")
        )
    return h5ad, out, config


def _cmd_output(args) -> int:
    import anndata as ad

    import interscale as isc

    h5ad, out, config = _run_folder(args, "preprocessed.h5ad", "trained.h5ad")
    cfg = _load_cfg(config, {}) if config else None
    adata = ad.read_h5ad(h5ad)
    if read_setup(adata) is None:
        raise SystemExit(f"{h5ad} is not set up; write it with `interscale train` first")
    model = isc.model.CombinedModel.load(args.checkpoint, adata, cfg)
    model.get_model_output(adata, masked=not args.unmasked, predictions=args.predictions)
    _write_h5ad_atomic(adata, out)
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args) -> int:
    from interscale.evaluation import evaluate_to_folder

    h5ad, out, config = _run_folder(args, "trained.h5ad", "evaluation")
    metrics = evaluate_to_folder(
        h5ad,
        args.checkpoint,
        out,
        config=config,
        cells=args.cells,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    print(f"wrote {out} (gene ranks scored on {metrics['cells']})")
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
    p.add_argument(
        "--h5ad",
        help="input AnnData (default: config's h5ad_data or built-in data); without --config, "
        "your own file with the tutorial configuration (then --sample-key is needed)",
    )
    p.add_argument("--out", default="results/train", help="output folder")
    p.add_argument("--epochs", type=int, help="override optim.n_epochs")
    own = p.add_argument_group("your own data (with --h5ad and no --config)")
    own.add_argument(
        "--sample-key",
        dest="sample_key",
        help="obs column naming each sample (comma-separated for several); with "
        "--tile-max-cells, the one column whose samples are cut into tiles",
    )
    own.add_argument(
        "--counts-layer",
        dest="counts_layer",
        default="auto",
        help="where the counts are: auto (layers['counts'], else layers['raw'], else X), X, or a "
        "layer name (default: auto)",
    )
    p.add_argument(
        "--tile-max-cells",
        type=int,
        dest="tile_max_cells",
        metavar="N",
        help="cut each sample (e.g. one tissue section) into spatial tiles of at most N cells "
        "(interscale.pp.tile) and split whole tiles into train/val/test; recorded in the "
        "config as dataset.tile_max_cells",
    )
    graph = own.add_mutually_exclusive_group()
    graph.add_argument("--radius", type=float, help="radius graph in the coordinates' units")
    graph.add_argument("--knn", type=int, help="k-nearest-neighbour graph (default: 10 neighbours)")
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--split-key", dest="split_key", help="obs column with train/val/test per sample"
    )
    split.add_argument(
        "--split-fractions",
        dest="split_fractions",
        help="train,val,test shares of whole samples (or tiles) when the data has no split "
        "column (default: the config's, 0.5,0.25,0.25 for your own data without --config; "
        "held-out scores read only the test share)",
    )
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
    p.add_argument("--checkpoint", required=True, help="checkpoint file or training folder")
    p.add_argument("--h5ad", help="input AnnData (default: <folder>/preprocessed.h5ad)")
    p.add_argument("--config", help="YAML config (default: <folder>/config.yaml if present)")
    p.add_argument("--out", help="output .h5ad (default: <folder>/trained.h5ad)")
    p.add_argument("--unmasked", action="store_true", help="unmasked reconstruction")
    p.add_argument(
        "--predictions",
        choices=list(PREDICTION_MODES),
        help="how prediction layers are stored (default: dense below 2 GiB, else refused)",
    )
    p.set_defaults(func=_cmd_output)

    p = sub.add_parser("evaluate", help="gene-level evaluation into tables and figures")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or training folder")
    p.add_argument(
        "--h5ad", help="trained AnnData, after `output` (default: <folder>/trained.h5ad)"
    )
    p.add_argument("--config", help="YAML config (default: <folder>/config.yaml if present)")
    p.add_argument("--out", help="output folder (default: <folder>/evaluation)")
    p.add_argument(
        "--cells",
        default="test",
        help="cells the gene ranks are scored on: split names, comma-separated, or 'all' "
        "(default: test, the held-out samples that neither training nor early stopping saw; "
        "refused when the data has no test samples)",
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
    p.add_argument("--config", help="YAML config (default: config_files/synthetic_example.yaml)")
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
