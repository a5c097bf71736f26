"""Execute the notebooks of a profile, gather their metrics and compare them with expectations."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from interscale._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
# Timings vary from run to run; they are reported but never part of the determinism check.
_NONDETERMINISTIC = ("seconds",)


def _write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(text, path)


def load_expected(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read and validate an expected-metrics file.

    Parameters
    ----------
    path
        JSON file mapping metric name to a spec: ``{"value": x, "rtol": r, "atol": a}`` (either
        tolerance optional, both default 0; a string or null ``value`` is compared exactly) or
        ``{"min": a, "max": b}`` (either bound optional), each with a one-line ``"reason"``.
        Keys starting with ``_`` are comments.

    Returns
    -------
    dict
        Metric name -> spec.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        A spec has neither ``value`` nor ``min``/``max``, or both.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected-metrics file not found: {path}")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be an object of metric specs")
    specs = {}
    for name, spec in data.items():
        if name.startswith("_"):
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: spec of {name!r} must be an object, got {spec!r}")
        has_value = "value" in spec
        has_range = "min" in spec or "max" in spec
        if has_value == has_range:
            raise ValueError(f"{path}: spec of {name!r} needs either 'value' or 'min'/'max'")
        specs[name] = spec
    return specs


def _describe(spec: Mapping[str, Any]) -> str:
    if "value" in spec:
        tol = [f"{k}={spec[k]:g}" for k in ("rtol", "atol") if k in spec]
        return f"{spec['value']!r}" + (f" ({', '.join(tol)})" if tol else "")
    lo, hi = spec.get("min"), spec.get("max")
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"


def check_metrics(got: Any, spec: Mapping[str, Any]) -> bool:
    """Whether one metric value satisfies its spec (see :func:`load_expected`).

    Parameters
    ----------
    got
        The measured value (a number, a string or None).
    spec
        The expected spec.

    Returns
    -------
    bool
        True when the value is within the tolerance or the range. A non-finite number, or a
        missing value where a number is expected, never passes.
    """
    if "value" in spec:
        want = spec["value"]
        if isinstance(want, bool) or not isinstance(want, (int, float)):
            return got == want
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            return False
        tol = float(spec.get("atol", 0.0)) + float(spec.get("rtol", 0.0)) * abs(want)
        return abs(got - want) <= tol
    if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
        return False
    lo, hi = spec.get("min"), spec.get("max")
    return (lo is None or got >= lo) and (hi is None or got <= hi)


def compare(
    metrics: Mapping[str, Any], expected: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Compare gathered metrics with the expected specs.

    Parameters
    ----------
    metrics
        Metric name -> measured value.
    expected
        Metric name -> spec (see :func:`load_expected`).

    Returns
    -------
    list of dict
        One row per expected metric (``metric``, ``expected``, ``got``, ``ok``), then one per
        measured metric without an expectation (``ok`` None). A missing metric fails.
    """
    rows = []
    for name, spec in expected.items():
        if name not in metrics:
            rows.append(
                {"metric": name, "expected": _describe(spec), "got": "MISSING", "ok": False}
            )
            continue
        got = metrics[name]
        rows.append(
            {
                "metric": name,
                "expected": _describe(spec),
                "got": got,
                "ok": check_metrics(got, spec),
            }
        )
    for name in sorted(set(metrics) - set(expected)):
        rows.append({"metric": name, "expected": "(not checked)", "got": metrics[name], "ok": None})
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison rows as a fixed-width text table."""
    header = ("metric", "expected", "got", "ok")
    body = [
        (
            r["metric"],
            r["expected"],
            _fmt(r["got"]),
            {True: "ok", False: "MISS", None: "-"}[r["ok"]],
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(4)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _gather_metrics(metrics_dir: Path) -> dict[str, Any]:
    out = {}
    for path in sorted(metrics_dir.glob("metrics_*.json")):
        k = path.stem.split("_", 1)[1]
        for name, value in json.loads(path.read_text()).items():
            out[f"{k}.{name}"] = value
    return out


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
        print(f"[reproduce] {profile}: running {path.name}", flush=True)
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
    result["metrics"] = _gather_metrics(metrics_dir)
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a profile, print the comparison table; 0 when everything passes, else 1."""
    args = _parser().parse_args(argv)
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
    metrics = res["metrics"]
    if args.only is not None:
        metrics = {k: v for k, v in metrics.items() if k.split(".", 1)[0] == args.only}
    rows = compare(metrics, expected)
    print()
    print(format_table(rows))
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
    print("reproduce: OK" if ok else "reproduce: FAILED")
    return 0 if ok else 1
