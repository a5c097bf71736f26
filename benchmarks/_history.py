"""Benchmark history that reads offline: figures and tables from the committed asv results.

``asv publish`` writes pages that load their JavaScript from the internet; this module draws the
same history with matplotlib instead.  It reads the result files that asv writes under
``benchmarks/results/<machine>/<commit>-<environment>.json`` (``results_dir`` of
``asv.conf.json``) and the benchmark index ``benchmarks/results/benchmarks.json``, and writes a
Markdown page with one PNG per benchmark: one panel per parameter combination that has a value,
one line per machine (and environment, where a machine has several), commits on the x axis in
commit order (git's topological order where the repository is at hand, else the commit dates).
A machine's ``commands.txt``, if present, is shown verbatim as the commands that produced its
results.

Run ``python -m benchmarks._history --out DIR`` (see ``benchmarks/README.md``); the docs builder
(``reproduce/docs``) calls :func:`write_page` for its "Performance across versions" page.

asv imports every module of the benchmark folder: nothing here is named like a benchmark, and
matplotlib is imported only when drawing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The committed results (``results_dir`` of ``asv.conf.json``).
RESULTS = ROOT / "benchmarks" / "results"
_SPECIAL = ("machine.json", "benchmarks.json")
_COMMANDS = "commands.txt"


@dataclass
class Run:
    """One asv result file: a machine, an environment, a commit and the benchmark values."""

    machine: str
    env: str
    commit: str
    date: int
    values: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)

    @property
    def line(self) -> str:
        return f"{self.machine} ({self.env})"


@dataclass
class History:
    """Everything read from one results folder."""

    benchmarks: dict[str, dict]
    runs: list[Run]
    machines: dict[str, dict]
    commands: dict[str, str]
    order: list[str] = field(default_factory=list)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _combinations(params: list[list[str]]) -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for values in params:
        combos = [(*c, v) for c in combos for v in values]
    return combos


def _read_run(path: Path, machine: str) -> Run:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("commit_hash", "env_name", "results", "result_columns"):
        if key not in data:
            raise ValueError(f"{path}: not an asv result file (no {key!r})")
    columns = data["result_columns"]
    run = Run(machine, data["env_name"], data["commit_hash"], int(data.get("date") or 0))
    for name, row in data["results"].items():
        entry = dict(zip(columns, row, strict=False))
        results = entry.get("result")
        if not isinstance(results, list):
            results = [results]
        combos = _combinations(entry.get("params") or [])
        if len(combos) != len(results):
            raise ValueError(
                f"{path}: {name} has {len(results)} values for {len(combos)} parameter sets"
            )
        values = {
            combo: float(value)
            for combo, value in zip(combos, results, strict=True)
            if isinstance(value, int | float) and not math.isnan(value)
        }
        if values:
            run.values[name] = values
    return run


def load_history(results: str | os.PathLike[str] = RESULTS, repo: str | None = None) -> History:
    """Read every asv result file of a results folder.

    Parameters
    ----------
    results
        asv's ``results_dir``: ``benchmarks.json`` and one folder per machine.
    repo
        A git repository holding the commits, for their order (default: none, the dates).

    Returns
    -------
    History
        Benchmarks index, runs, machine descriptions, commands and the commit order.

    Raises
    ------
    ValueError
        A result file that asv did not write (missing keys, values that do not match the
        parameters).
    """
    results = Path(results)
    index = results / "benchmarks.json"
    benchmarks = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    benchmarks.pop("version", None)
    runs, machines, commands = [], {}, {}
    for folder in sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []:
        files = sorted(p for p in folder.glob("*.json") if p.name not in _SPECIAL)
        if not files:
            continue
        info = folder / "machine.json"
        machines[folder.name] = json.loads(info.read_text()) if info.is_file() else {}
        if (folder / _COMMANDS).is_file():
            commands[folder.name] = (folder / _COMMANDS).read_text(encoding="utf-8").strip()
        runs.extend(_read_run(path, folder.name) for path in files)
    history = History(benchmarks, runs, machines, commands)
    history.order = commit_order(runs, repo)
    return history


def commit_order(runs: list[Run], repo: str | None = None) -> list[str]:
    """The commits of ``runs``, oldest first: git's topological order, else by date.

    Parameters
    ----------
    runs
        Result files read by :func:`load_history`.
    repo
        A git repository (or None): its ``rev-list --topo-order`` decides first; commits it
        does not know follow, by date.

    Returns
    -------
    list of str
        Full commit hashes, each once.
    """
    dates: dict[str, int] = {}
    for run in runs:
        dates[run.commit] = max(dates.get(run.commit, 0), run.date)
    rank: dict[str, int] = {}
    if repo is not None:
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), "rev-list", "--topo-order", "--reverse", "--all"],
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout  # fmt: skip
            rank = {sha: i for i, sha in enumerate(out.split())}
        except (OSError, subprocess.SubprocessError):
            rank = {}
    return sorted(dates, key=lambda c: (rank.get(c, len(rank)), dates[c], c))


def _label(history: History, run: Run) -> str:
    """A line's label: the machine name, with the environment where a machine has several."""
    several = len({r.env for r in history.runs if r.machine == run.machine}) > 1
    return run.line if several else run.machine


def _lines(history: History) -> list[str]:
    return sorted({_label(history, run) for run in history.runs})


def series(
    history: History, name: str
) -> dict[tuple[str, ...], dict[str, list[tuple[int, float]]]]:
    """The values of one benchmark: panel (parameters) -> line (machine) -> (commit index, value).

    Parameters
    ----------
    history
        See :func:`load_history`.
    name
        Full benchmark name (``bench_training.TrainEpoch.time_epoch``).

    Returns
    -------
    dict
        Only panels and lines that have at least one value; points in commit order.
    """
    position = {c: i for i, c in enumerate(history.order)}
    panels: dict[tuple[str, ...], dict[str, list[tuple[int, float]]]] = {}
    for run in history.runs:
        for combo, value in run.values.get(name, {}).items():
            line = panels.setdefault(combo, {}).setdefault(_label(history, run), [])
            line.append((position[run.commit], value))
    for lines in panels.values():
        for points in lines.values():
            points.sort()
    return panels


def _combo_key(item: tuple) -> tuple:
    """Sort parameter combinations numerically where the values are numbers (2578 < 10000)."""

    def one(value: str) -> tuple[int, float, str]:
        try:
            return (0, float(value), "")
        except ValueError:
            return (1, 0.0, value)

    return tuple(one(v) for v in item[0])


def _unit(history: History, name: str) -> tuple[str, float]:
    """Axis unit and divisor: seconds stay seconds, bytes become MiB."""
    unit = history.benchmarks.get(name, {}).get("unit", "")
    if unit == "bytes":
        return "MiB", 2.0**20
    return (unit or "value"), 1.0


def _param_text(history: History, name: str, combo: tuple[str, ...]) -> str:
    names = history.benchmarks.get(name, {}).get("param_names") or [
        f"p{i}" for i in range(len(combo))
    ]
    return ", ".join(f"{n}={v.strip(chr(39))}" for n, v in zip(names, combo, strict=False))


#: Benchmarks shown first, in this order (by class); every other benchmark follows by name.
FIRST = ("TrainEpoch", "AttentionCore", "ModelOutput", "TrainStep", "LargeSampleStep", "Quality")


def _benchmark_names(history: History) -> list[str]:
    present = {name for run in history.runs for name in run.values}

    def key(name: str) -> tuple[int, str, int, str]:
        cls = name.split(".")[-2] if name.count(".") >= 2 else ""
        kind = name.rsplit(".", 1)[-1].split("_", 1)[0]  # time, peakmem, track, ...
        rank = FIRST.index(cls) if cls in FIRST else len(FIRST)
        return (
            rank,
            cls,
            ("time", "peakmem").index(kind) if kind in ("time", "peakmem") else 2,
            name,
        )

    return sorted(present, key=key)


def draw(history: History, name: str, path: str | os.PathLike[str] | None = None):
    """One figure per benchmark: a panel per parameter combination, a line per machine.

    Parameters
    ----------
    history
        See :func:`load_history`.
    name
        Full benchmark name.
    path
        Where to write the PNG (atomically); None: do not save.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (its lines carry the machine labels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = series(history, name)
    unit, scale = _unit(history, name)
    labels = _lines(history)
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    n = max(1, len(panels))
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows + 0.6), squeeze=False)
    ticks = [c[:8] for c in history.order]
    for ax, (combo, lines) in zip(axes.flat, sorted(panels.items(), key=_combo_key), strict=False):
        for label, points in sorted(lines.items()):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, [y / scale for y in ys], "o-", color=colours[label], label=label, ms=4)
        ax.set_title(_param_text(history, name, combo) or "(no parameters)", fontsize=9)
        ax.set_xticks(range(len(ticks)), ticks, rotation=60, fontsize=7, family="monospace")
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.set_ylim(bottom=0)  # timings and memory: from zero, so noise does not look like a step
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle(name, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.12 / rows if handles else 0, 1, 0.94))
    if path is not None:
        path = Path(path)
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    plt.close(fig)
    return fig


def _date(millis: int) -> str:
    if not millis:
        return ""
    stamp = datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M")


def _fmt(value: float, unit: str) -> str:
    if unit == "seconds":
        return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    return f"{value:.4g}"


def table(history: History, name: str) -> str:
    """A Markdown table of one benchmark: rows (parameters, machine), columns the commits."""
    unit = history.benchmarks.get(name, {}).get("unit", "")
    shown = [
        c for c in history.order if any(r.commit == c and name in r.values for r in history.runs)
    ]
    head = "| parameters | machine | " + " | ".join(f"`{c[:8]}`" for c in shown) + " |"
    rule = "|---|---|" + "---|" * len(shown)
    rows = [head, rule]
    for combo, lines in sorted(series(history, name).items(), key=_combo_key):
        for label, points in sorted(lines.items()):
            by_commit = {history.order[i]: v for i, v in points}
            cells = [_fmt(by_commit[c], unit) if c in by_commit else "" for c in shown]
            params = _param_text(history, name, combo) or "-"
            rows.append(f"| {params} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _machine_section(history: History, machine: str) -> str:
    info = dict(history.machines.get(machine, {}))
    if str(info.get("ram", "")).isdigit():  # asv records kB
        info["ram"] = f"{int(info['ram']) / 2**20:.1f} GiB"
    described = ", ".join(
        f"{key}: {info[key]}" for key in ("cpu", "num_cpu", "ram", "os", "arch") if info.get(key)
    )
    runs = [r for r in history.runs if r.machine == machine]
    envs = sorted({r.env for r in runs})
    commits = [c[:8] for c in history.order if any(r.commit == c for r in runs)]
    parts = [
        f"### {machine}",
        "",
        f"- machine: {described or 'not described'}",
        f"- environments: {', '.join(f'`{e}`' for e in envs)}",
        f"- commits ({len(commits)}): {', '.join(f'`{c}`' for c in commits)}",
        "",
    ]
    if machine in history.commands:
        parts += ["Commands and notes (`commands.txt`):", "", "```text"]
        parts += [history.commands[machine], "```", ""]
    else:
        parts += ["Commands: not recorded (no `commands.txt` in its results folder).", ""]
    return "\n".join(parts)


def write_page(
    results: str | os.PathLike[str] = RESULTS,
    out: str | os.PathLike[str] = "benchmark-history",
    repo: str | None = None,
    title: str = "Performance across versions",
) -> History:
    """Write ``out/index.md`` and one PNG per benchmark found in the results.

    Parameters
    ----------
    results
        asv results folder (default: the committed ``benchmarks/results``).
    out
        Output folder (created; existing PNGs of the same names are replaced).
    repo
        Git repository for the commit order (see :func:`commit_order`).
    title
        Page title.

    Returns
    -------
    History
        What was read (``order``: the commits on the x axis).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history = load_history(results, repo)
    names = _benchmark_names(history)
    lines = [
        f"# {title}",
        "",
        "Drawn by `python -m benchmarks._history` from the asv results committed under "
        f"`benchmarks/results/`: {len(history.runs)} result files, {len(history.machines)} "
        f"machine(s), {len(history.order)} commit(s), {len(names)} benchmark(s). One line per "
        "machine; x = commits in commit order (oldest left). A missing point means the benchmark "
        "was not run at that commit, was skipped there (e.g. `cuda` on a CPU machine) or failed. "
        "`benchmarks/README.md` gives the commands; GPU machines appear here once their results "
        "are committed.",
        "",
    ]
    if not history.runs:
        lines += ["No results recorded yet.", ""]
    else:
        lines += ["## Result sets", ""]
        lines += [_machine_section(history, m) for m in sorted(history.machines)]
        dates = {r.commit: r.date for r in history.runs}
        lines += ["## Commits", "", "| # | commit | commit date (UTC) |", "|---|---|---|"]
        lines += [f"| {i} | `{c}` | {_date(dates[c])} |" for i, c in enumerate(history.order)]
        lines.append("")
    for name in names:
        png = f"{name}.png"
        draw(history, name, out / png)
        unit = history.benchmarks.get(name, {}).get("unit", "")
        lines += [f"## {name}", "", f"Unit: {unit or 'value'}.", "", f"![{name}]({png})", ""]
        lines += [table(history, name), ""]
    _atomic_write(out / "index.md", "\n".join(lines).encode("utf-8"))
    return history


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m benchmarks._history [--results DIR] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._history", description=__doc__)
    parser.add_argument("--results", default=str(RESULTS), help="asv results folder")
    parser.add_argument("--out", default="benchmark-history", help="output folder")
    parser.add_argument("--repo", default=str(ROOT), help="git repository (commit order)")
    args = parser.parse_args(argv)
    history = write_page(args.results, args.out, args.repo)
    print(
        f"{Path(args.out) / 'index.md'}: {len(history.runs)} result files, "
        f"{len(history.order)} commits, {len(_benchmark_names(history))} benchmarks"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
