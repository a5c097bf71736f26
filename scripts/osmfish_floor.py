"""Both heads against the linear floors on held-out osmFISH tiles, through the own-data path.

The protocol of issue 23: ``datasets.osmfish()`` (4,839 cells x 33 genes, one section) cut by
``pp.tile(max_cells=...)``, normalised, whole tiles split 50/25/25 with ``split_samples(seed=0)``,
a 10-nearest-neighbour graph per tile, ``tutorial_config()``, training, held-out predictions,
and each head's mean R^2 on the test tiles (neither training nor early stopping saw them)
against the best of the ``hop1``, ``hop2`` and ``hop2_sample`` ridges of
``tl.linear_baselines(..., heldout=("test",))``.

    python scripts/osmfish_floor.py --seed 3
    python scripts/osmfish_floor.py --seed 5 --epochs 60 --set model.n_embed=64
    python scripts/osmfish_floor.py --data synthetic --seed 0 --epochs 100 --set optim.lr=0.005

(from the repository root, with the source tree first on the path: ``PYTHONPATH=.``).

Prints one table per head (mean test R^2, each floor, the ratios, the genes on which the head
beats the floor) and the run time; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import pandas as pd
import yaml

import interscale as isc
from interscale.config import tutorial_config, with_overrides

FLOORS = ("hop1", "hop2", "hop2_sample")
TILE_KEY = "tile"


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def prepare(max_cells: int, split_seed: int, n_neighs: int):
    """The osmFISH section tiled, normalised, split and given its graph (the own-data path)."""
    adata = isc.datasets.osmfish()
    isc.pp.tile(adata, max_cells=max_cells, library_key="section", key_added=TILE_KEY)
    isc.pp.normalize(adata)
    isc.pp.split_samples(adata, TILE_KEY, fractions=(0.5, 0.25, 0.25), seed=split_seed)
    isc.pp.spatial_neighbors(adata, n_neighs=n_neighs, library_key=TILE_KEY)
    return adata


def _linear_summary(fit: dict | None) -> dict | None:
    """Design, penalty and the deep part's factors (mean, share kept) of each head."""
    if fit is None:
        return None
    out = {}
    for head in ("local", "global"):
        if head in fit:
            gamma = np.asarray(fit["gamma"][head])
            designs = pd.Series(fit[head]["design"]).value_counts()
            out[head] = {
                "design": ", ".join(f"{k} x{v}" for k, v in designs.items()),
                "cv_r2": fit[head]["cv_r2"],
                "gamma_mean": float(gamma.mean()),
                "genes_with_deep_part": int((gamma > 0).sum()),
            }
    return out


def prepare_synthetic():
    """The quick profile's organoids (12 of 600-900 cells, their own split), radius-200 graph."""
    adata = isc.datasets.synthetic_organoids(12, (600, 900), seed=0)
    isc.pp.normalize(adata)
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    return adata


def run(args) -> dict:
    """Train one model and score both heads and the floors on the test samples."""
    t0 = time.perf_counter()
    if args.data == "synthetic":
        adata, unit = prepare_synthetic(), "sample"
    else:
        adata, unit = prepare(args.max_cells, args.split_seed, args.n_neighs), TILE_KEY
    floors = isc.tl.linear_baselines(adata, library_key=unit, heldout=("test",), key_added=None)
    cfg = with_overrides(tutorial_config(), {"optim.seed": args.seed, **_overrides(args.set)})
    isc.model.CombinedModel.setup_anndata(
        adata, layer_key="log1p_norm", sample_key_list=[unit], view_registry=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = isc.model.CombinedModel(adata, cfg)
        t_train = time.perf_counter()
        model.train(max_epochs=args.epochs, progress_bar=False)
        t_train = time.perf_counter() - t_train
        model.get_model_output(adata)
    ranks = isc.evaluation.calculate_gene_ranks(
        adata,
        layers_local_pred="_y_pred_local",
        layers_global_pred="_y_pred_global",
        cells="test",
    ).set_index("gene")
    floors = floors.loc[ranks.index]
    best = max(FLOORS, key=lambda name: float(floors[name].mean()))
    result = {
        "data": args.data,
        "seed": args.seed,
        "epochs_run": int(len(model.history_)),
        "best_epoch": model.best_epoch_,
        "n_tiles": int(adata.obs[unit].nunique()),
        "n_test_cells": int((adata.obs["split"] == "test").sum()),
        "overrides": args.set,
        "floors": {name: float(floors[name].mean()) for name in ("mean", *FLOORS)},
        "best_floor": best,
        "heads": {},
        "linear_fit": _linear_summary(getattr(model, "linear_fit_", None)),
        "train_seconds": t_train,
        "seconds": time.perf_counter() - t0,
    }
    for head in ("local", "global"):
        r2 = ranks[f"r2_{head}"]
        result["heads"][head] = {
            "r2": float(r2.mean()),
            "ratio_best": float(r2.mean() / floors[best].mean()),
            "ratios": {n: float(r2.mean() / floors[n].mean()) for n in FLOORS},
            "genes_beating": {
                n: int((r2.to_numpy() > floors[n].to_numpy()).sum()) for n in ("mean", *FLOORS)
            },
            "n_genes": int(np.isfinite(r2.to_numpy()).sum()),
        }
    return result


def print_tables(result: dict) -> None:
    """One table per head: the head's mean test R^2 against every floor."""
    print(
        f"{result['data']}, {result['n_tiles']} samples, {result['n_test_cells']} test cells, "
        f"training seed {result['seed']}, {result['epochs_run']} epochs "
        f"(best {result['best_epoch']}), overrides {result['overrides'] or 'none'}"
    )
    for head, h in result["heads"].items():
        print(f"\n{head} head: mean test R^2 {h['r2']:.4f}")
        print(f"  {'floor':<12} {'R^2':>7} {'ratio':>7} {'genes beaten':>13}")
        for name in ("mean", *FLOORS):
            value = result["floors"][name]
            ratio = h["r2"] / value if value else float("nan")
            mark = " (best)" if name == result["best_floor"] else ""
            print(
                f"  {name:<12} {value:7.4f} {ratio:7.3f} "
                f"{h['genes_beating'][name]:>6d}/{h['n_genes']}{mark}"
            )
    print(
        f"\nratio to the best floor ({result['best_floor']}): "
        + ", ".join(f"{k} {v['ratio_best']:.3f}" for k, v in result["heads"].items())
    )
    for head, lin in (result["linear_fit"] or {}).items():
        print(
            f"{head} linear part: {lin['design']} (CV R^2 {lin['cv_r2']:.4f}), deep part kept on "
            f"{lin['genes_with_deep_part']} genes (mean factor {lin['gamma_mean']:.2f})"
        )
    print(f"run time {result['seconds']:.1f} s (training {result['train_seconds']:.1f} s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=3, help="training seed (optim.seed)")
    parser.add_argument("--epochs", type=int, default=None, help="default: optim.n_epochs")
    parser.add_argument(
        "--data",
        choices=("osmfish", "synthetic"),
        default="osmfish",
        help="osmfish (tiled section) or the quick profile's synthetic organoids",
    )
    parser.add_argument("--max-cells", type=int, default=410, help="pp.tile max_cells")
    parser.add_argument("--split-seed", type=int, default=0, help="split_samples seed")
    parser.add_argument("--n-neighs", type=int, default=10)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = run(args)
    print_tables(result)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
