"""Execute the notebooks of a profile, gather their metrics and compare them with expectations."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from interscale.evaluation import read_metrics
from reproduce._bands import compare, format_table, load_expected, summary_line
from reproduce._sabotage import (
    band_matrix,
    broken_claims,
    format_matrix,
    parse_kinds,
    provenance,
    sabotaged_parameters,
    unearned,
)

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
# Timings vary from run to run; they are reported but never part of the determinism check.
_NONDETERMINISTIC = ("seconds",)


def _write_text_atomic(text: str, path: Path) -> None:
    # a temp file beside the target, then a rename: a reader never sees half a file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _export_html(nb_path: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(nb_path, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    _write_text_atomic(body, nb_path.with_suffix(".html"))


def _relative(path: Path, cwd: Path) -> str:
    # Notebooks get relative paths where possible so executed notebooks carry no machine paths.
    try:
        return os.path.relpath(path, cwd)
    except ValueError:
        return str(path)


def run_profile(
    profile: str,
    out: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    notebooks: str | os.PathLike[str] | None = None,
    profiles: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    only: str | None = None,
    sabotage: str | None = None,
) -> dict[str, Any]:
    """Execute every ``<digit>*.ipynb`` notebook of a folder in order with papermill.

    Parameters
    ----------
    profile
        Name of the parameters file ``<profiles>/<profile>.yaml``. Each notebook receives the
        parameters of that file that its ``parameters`` cell declares.
    out
        Build folder (default ``reproduce/_build/<profile>``): executed notebooks and HTML,
        ``data/`` (the notebooks' ``data_dir``) and ``metrics/`` (their ``out_dir``).
    device
        ``device`` parameter passed to every notebook.
    notebooks
        Folder with the notebooks (default ``notebooks/`` of the repository).
    profiles
        Folder with the profile files (default ``reproduce/profiles``).
    cwd
        Working directory of the notebooks (default: the repository root, so the paths in the
        profiles are relative to it).
    only
        Run only the notebooks whose number is ``only`` (e.g. ``"4"`` for
        ``4_real_tissue.ipynb``); the metrics of the other notebooks in the build folder are
        kept. None runs every notebook.
    sabotage
        A key of :data:`reproduce._sabotage.SABOTAGES`: the profile's parameters with that
        sabotage applied on top (a model that must miss the ``model`` bands). None: as the
        profile says.

    Returns
    -------
    dict
        ``metrics`` (name -> value, named ``<notebook number>.<metric>``), ``failed`` (name of
        the notebook that raised, or None), ``error`` (its message), ``seconds`` per notebook,
        ``out`` (the build folder).

    Raises
    ------
    FileNotFoundError
        The profile file or the notebook folder does not exist, or it holds no notebook (or
        none numbered ``only``).
    ValueError
        The profile sets a parameter that no notebook's ``parameters`` cell declares.
    """
    import papermill as pm

    cwd = Path(cwd or ROOT).resolve()
    nb_dir = Path(notebooks or ROOT / "notebooks").resolve()
    prof_path = Path(profiles or _HERE / "profiles") / f"{profile}.yaml"
    if not prof_path.is_file():
        raise FileNotFoundError(f"profile file not found: {prof_path}")
    paths = sorted(p for p in nb_dir.glob("*.ipynb") if p.name[:1].isdigit())
    # Each notebook gets the profile's parameters its parameters cell declares; a profile
    # parameter that no notebook declares is a typo and stops the run before anything executes.
    declared = {p: set(pm.inspect_notebook(str(p))) for p in paths}
    if only is not None:
        paths = [p for p in paths if _number(p) == str(only)]
    if not paths:
        which = "" if only is None else f" numbered {only}"
        raise FileNotFoundError(f"no notebooks (<digit>*.ipynb{which}) in {nb_dir}")
    params = yaml.safe_load(prof_path.read_text()) or {}
    if sabotage is not None:
        params = sabotaged_parameters(params, sabotage, set().union(*declared.values()))
    unknown = sorted(set(params) - set().union(*declared.values()))
    if unknown:
        raise ValueError(f"{prof_path}: no notebook declares the parameter(s) {unknown}")
    out = Path(out or _HERE / "_build" / profile).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params.update(
        data_dir=_relative(out / "data", cwd),
        out_dir=_relative(out / "metrics", cwd),
        device=device,
    )
    metrics_dir = out / "metrics"
    numbers = {_number(p) for p in paths}
    for stale in metrics_dir.glob("metrics_*.json"):
        if only is None or stale.stem.split("_", 1)[1] in numbers:
            stale.unlink()
    result: dict[str, Any] = {"failed": None, "error": None, "seconds": {}, "out": str(out)}
    for path in paths:
        target = out / path.name
        which = "" if sabotage is None else f" (sabotage {sabotage})"
        print(f"[reproduce] {profile}{which}: running {path.name}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(path),
                str(target),
                parameters={k: v for k, v in params.items() if k in declared[path]},
                kernel_name="python3",
                cwd=str(cwd),
                progress_bar=False,
            )
        except pm.PapermillExecutionError as exc:
            result["failed"] = path.name
            result["error"] = f"{exc.ename}: {exc.evalue}"
        finally:
            result["seconds"][path.name] = time.perf_counter() - t0
            if target.is_file():
                _export_html(target)
        print(
            f"[reproduce] {path.name}: {result['seconds'][path.name]:.1f} s"
            + (f" FAILED ({result['error']})" if result["failed"] else ""),
            flush=True,
        )
        if result["failed"]:
            break
    result["metrics"] = read_metrics(metrics_dir)
    _write_text_atomic(json.dumps(result, indent=2, sort_keys=True), out / "metrics.json")
    return result


def _number(notebook: Path) -> str:
    """The number of a notebook (``"4"`` for ``4_real_tissue.ipynb``): its metrics' prefix."""
    return notebook.name.split("_", 1)[0]


def _embedding_hashes(h5ad: Path) -> dict[str, str]:
    import anndata as ad
    import numpy as np

    adata = ad.read_h5ad(h5ad)
    return {
        key: hashlib.sha256(np.ascontiguousarray(adata.obsm[key]).tobytes()).hexdigest()
        for key in sorted(adata.obsm.keys())
    }


def _deterministic_part(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not any(t in k for t in _NONDETERMINISTIC)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__)
    p.add_argument("--profile", default="quick", help="profile name (quick or full)")
    p.add_argument("--out", help="build folder (default reproduce/_build/<profile>)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--check-determinism", action="store_true", dest="check_determinism")
    p.add_argument("--notebooks", help="notebook folder (default notebooks/)")
    p.add_argument("--profiles", help="profile folder (default reproduce/profiles/)")
    p.add_argument(
        "--expected", help="expected metrics (default reproduce/expected/<profile>.json)"
    )
    p.add_argument("--cwd", help="notebooks' working directory (default: the repository root)")
    p.add_argument(
        "--only",
        help="run only the notebook with this number (e.g. 4) and check only its metrics",
    )
    p.add_argument(
        "--sabotage",
        metavar="KINDS",
        help="after the good run, run the notebooks once per sabotage ('all' or a comma list "
        "of one_epoch, tiny_lr, training_mean, shuffled_coordinates, permuted_genes) and fail "
        "unless every model band is missed by at least one",
    )
    p.add_argument(
        "--record",
        nargs="?",
        const="",
        metavar="PATH",
        help="write the good run's (and the sabotaged runs') metrics, with the commit and the "
        "environment, to PATH (default reproduce/expected/<profile>_run.json)",
    )
    return p


def _select(metrics: Mapping[str, Any], only: str | None) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if only is None or k.split(".", 1)[0] == only}


def _run_sabotages(
    args: argparse.Namespace, out: Path, kinds: list[str], expected: Mapping, good: Mapping
) -> tuple[dict[str, dict[str, Any]], bool]:
    """Run every sabotage, print the band-by-sabotage table; the runs and whether all is well."""
    runs: dict[str, dict[str, Any]] = {}
    ok = True
    for kind in kinds:
        res = run_profile(
            args.profile,
            out=out / "sabotage" / kind,
            device=args.device,
            notebooks=args.notebooks,
            profiles=args.profiles,
            cwd=args.cwd,
            only=args.only,
            sabotage=kind,
        )
        if res["failed"]:
            print(f"FAILED sabotage {kind}: {res['failed']}: {res['error']}", file=sys.stderr)
            ok = False
        runs[kind] = {"metrics": _select(res["metrics"], args.only), "seconds": res["seconds"]}
    rows = band_matrix(expected, good, {k: r["metrics"] for k, r in runs.items()})
    table = format_matrix(rows)
    _write_text_atomic(table + "\n", out / "sabotage.md")
    print(f"\nband by sabotage (also in {out / 'sabotage.md'}):\n{table}")
    missing = unearned(rows)
    if missing:
        print(f"UNEARNED: model bands that no sabotage misses: {missing}", file=sys.stderr)
        ok = False
    broken = broken_claims(rows, expected)
    if broken:
        print(f"BROKEN: bands that let a sabotage they reject pass: {broken}", file=sys.stderr)
        ok = False
    return runs, ok


def main(argv: list[str] | None = None) -> int:
    """Run a profile, print the comparison table; 0 when everything passes, else 1."""
    args = _parser().parse_args(argv)
    try:
        kinds = parse_kinds(args.sabotage) if args.sabotage else []
    except ValueError as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    expected_path = Path(args.expected or _HERE / "expected" / f"{args.profile}.json")
    try:
        expected = load_expected(expected_path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 1
    if args.only is not None:
        expected = {k: v for k, v in expected.items() if k.split(".", 1)[0] == args.only}
    out = Path(args.out or _HERE / "_build" / args.profile)
    runs = [out / "run1", out / "run2"] if args.check_determinism else [out]
    results = []
    for run_out in runs:
        res = run_profile(
            args.profile,
            out=run_out,
            device=args.device,
            notebooks=args.notebooks,
            profiles=args.profiles,
            cwd=args.cwd,
            only=args.only,
        )
        results.append(res)
        if res["failed"]:
            break
    res = results[0]
    metrics = _select(res["metrics"], args.only)
    rows = compare(metrics, expected)
    print()
    print(format_table(rows))
    print(summary_line(rows))
    total = sum(res["seconds"].values())
    print(f"\nnotebooks: {', '.join(f'{k} {v:.0f}s' for k, v in res['seconds'].items())}")
    print(f"total: {total:.0f} s; executed notebooks and HTML in {res['out']}")
    ok = all(r["ok"] is not False for r in rows)
    failed = [r["failed"] for r in results if r["failed"]]
    if failed:
        print(f"FAILED notebook: {failed[0]}: {results[-1]['error']}", file=sys.stderr)
        ok = False
    if args.check_determinism and not failed:
        first, second = (_deterministic_part(r["metrics"]) for r in results)
        if first != second:
            diff = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
            print(f"NOT DETERMINISTIC: metrics differ: {diff}", file=sys.stderr)
            ok = False
        h5 = [Path(r["out"]) / "data" / "trained.h5ad" for r in results]
        if all(p.is_file() for p in h5):
            hashes = [_embedding_hashes(p) for p in h5]
            if hashes[0] != hashes[1]:
                print(f"NOT DETERMINISTIC: embeddings differ: {hashes}", file=sys.stderr)
                ok = False
            else:
                print(f"determinism: metrics and obsm sha256 identical ({sorted(hashes[0])})")
    runs: dict[str, dict[str, Any]] = {}
    if kinds and not failed:
        runs, sabotage_ok = _run_sabotages(args, out, kinds, expected, metrics)
        ok = ok and sabotage_ok
    if args.record is not None and not failed:
        record = {
            "provenance": provenance(["python", "-m", "reproduce", *(argv or sys.argv[1:])]),
            "metrics": metrics,
            "seconds": res["seconds"],
            "sabotage": runs,
        }
        target = Path(args.record or _HERE / "expected" / f"{args.profile}_run.json")
        _write_text_atomic(json.dumps(record, indent=1, sort_keys=True) + "\n", target)
        print(f"recorded {target}")
    print("reproduce: OK" if ok else "reproduce: FAILED")
    return 0 if ok else 1
