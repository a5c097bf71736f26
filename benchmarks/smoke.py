"""Smoke run of the asv suite without asv: every benchmark once, at its smallest size.

Usage (from the repository root)::

    INTERSCALE_BENCH_SMOKE=1 python -m benchmarks.smoke [-k SUBSTRING]

Imports every ``benchmarks/bench_*.py`` module, and for every class and every parameter
combination runs ``setup_cache`` (once per class), ``setup``, each ``time_`` / ``peakmem_`` /
``track_`` method once and ``teardown``. ``NotImplementedError`` raised by ``setup`` (e.g. CUDA
absent) skips the combination, as in asv. Exit status 1 if anything else raised.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import itertools
import os
import sys
import time
import traceback
from pathlib import Path

PREFIXES = ("time_", "peakmem_", "track_", "mem_")


def _param_grid(obj) -> list[tuple]:
    params = getattr(obj, "params", None)
    if params is None or params == []:
        return [()]
    if not isinstance(params, tuple | list) or not params:
        return [()]
    if not isinstance(params[0], list | tuple):  # a single parameter given as a flat list
        params = (params,)
    return list(itertools.product(*params))


def _run_class(cls, pattern: str | None) -> tuple[int, int, int]:
    """Run one benchmark class; returns (passed, skipped, failed)."""
    passed = skipped = failed = 0
    methods = sorted(n for n, _ in inspect.getmembers(cls) if n.startswith(PREFIXES))
    if pattern:
        methods = [m for m in methods if pattern in f"{cls.__module__}.{cls.__name__}.{m}"]
    if not methods:
        return 0, 0, 0
    cache_args: tuple = ()
    if hasattr(cls, "setup_cache"):
        t0 = time.perf_counter()
        try:
            cache_args = (cls().setup_cache(),)
        except Exception:
            traceback.print_exc()
            print(f"FAIL {cls.__name__}.setup_cache", flush=True)
            return 0, 0, len(methods)
        print(f"  {cls.__name__}.setup_cache {time.perf_counter() - t0:.1f} s", flush=True)
    for name in methods:
        method = getattr(cls, name)
        grid = _param_grid(method) if hasattr(method, "params") else _param_grid(cls)
        for args in grid:
            label = f"{cls.__name__}.{name}{list(args) if args else ''}"
            inst = cls()
            t0 = time.perf_counter()
            try:
                if hasattr(inst, "setup"):
                    try:
                        inst.setup(*cache_args, *args)
                    except NotImplementedError as exc:
                        print(f"skip {label}: {exc}", flush=True)
                        skipped += 1
                        continue
                value = getattr(inst, name)(*cache_args, *args)
                if hasattr(inst, "teardown"):
                    inst.teardown(*cache_args, *args)
            except Exception:
                traceback.print_exc()
                print(f"FAIL {label}", flush=True)
                failed += 1
                continue
            shown = f" -> {value!r}" if name.startswith("track_") else ""
            print(f"ok   {label} {time.perf_counter() - t0:.1f} s{shown}", flush=True)
            passed += 1
    return passed, skipped, failed


def main(argv: list[str] | None = None) -> int:
    """Run the smoke suite.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 if every benchmark ran (or was skipped by its setup), 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="pattern", default=None, help="run names containing this")
    args = parser.parse_args(argv)
    os.environ.setdefault("INTERSCALE_BENCH_SMOKE", "1")
    package = Path(__file__).resolve().parent
    sys.path.insert(0, str(package.parent))
    totals = [0, 0, 0]
    start = time.perf_counter()
    for path in sorted(package.glob("bench_*.py")):
        module = importlib.import_module(f"{package.name}.{path.stem}")
        print(f"{module.__name__}", flush=True)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or name.startswith("_"):
                continue
            for i, n in enumerate(_run_class(cls, args.pattern)):
                totals[i] += n
    passed, skipped, failed = totals
    print(
        f"smoke: {passed} ran, {skipped} skipped, {failed} failed "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
