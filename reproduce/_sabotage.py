"""Sabotaged runs of the reproduction, and the table of which sabotage misses which band.

A band of ``reproduce/expected/<profile>.json`` belongs to one of :data:`GROUPS`. A ``model``
band claims that the model learned something; it earns its check only if a model that did not
learn misses it. So ``python -m reproduce --sabotage all`` runs the profile's notebooks again,
the same code path with the profile's parameters (its ``config_overrides`` included), once per
sabotage of :data:`SABOTAGES`, each changing a few parameters on top, and reads every band
against the metrics that the sabotaged notebooks themselves wrote. Nothing is taken from the
good run. Every ``model`` band must be missed by at least one sabotage. A ``set-up`` band is a
property of the data, the split, the configuration or the floors, and a ``speed`` band one of
the machine; no model can miss them, and they are checked against the good run only.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

GROUPS = {
    "model": "what the trained model reached; each is missed by at least one sabotage",
    "set-up": "the data, the split, the configuration, the floors: the same for any model",
    "speed": "time on this machine: no model quality",
}
MODEL_GROUP = "model"
# What each sabotage changes on top of the profile's parameters. ``epochs`` sets every epoch
# count of the notebooks (epochs, scope_epochs, tissue_epochs); ``overrides`` go into both
# config_overrides and tissue_config_overrides (min_epochs 0 lets a 1- or 2-epoch run end where
# it is told to); ``sabotage`` is the notebooks' own parameter of that name.
SABOTAGES: dict[str, dict[str, Any]] = {
    "one_epoch": {"epochs": 1, "overrides": {"optim.min_epochs": 0}},
    "tiny_lr": {"epochs": 2, "overrides": {"optim.min_epochs": 0, "optim.lr": 1e-9}},
    # both heads predict each gene's training mean; the embeddings and the attention are those
    # of a 1-epoch model, whose predictions are replaced
    "training_mean": {
        "epochs": 1,
        "overrides": {"optim.min_epochs": 0},
        "sabotage": "training_mean",
    },
    # trained as long as the good run, on data whose neighbourhoods or gene labels mean nothing
    "shuffled_coordinates": {"sabotage": "shuffled_coordinates"},
    "permuted_genes": {"sabotage": "permuted_genes"},
}
_EPOCH_PARAMETERS = ("epochs", "scope_epochs", "tissue_epochs")
_OVERRIDE_PARAMETERS = ("config_overrides", "tissue_config_overrides")
# A record is stale once a commit after it touched what decides the numbers it holds.
NUMERICS_PATHS = (
    "interscale/nn",
    "interscale/train",
    "interscale/model",
    "interscale/config",
    "config_files",
    "notebooks",
    "reproduce/profiles",
)


def parse_kinds(text: str) -> list[str]:
    """The sabotages named by ``text``: ``"all"`` or a comma-separated list of names.

    Raises
    ------
    ValueError
        A name is not a key of :data:`SABOTAGES`.
    """
    kinds = list(SABOTAGES) if text == "all" else [k.strip() for k in text.split(",") if k]
    unknown = [k for k in kinds if k not in SABOTAGES]
    if unknown or not kinds:
        raise ValueError(f"unknown sabotage(s) {unknown or text!r}; choose from {list(SABOTAGES)}")
    return kinds


def sabotaged_parameters(
    params: Mapping[str, Any], kind: str, declared: Collection[str]
) -> dict[str, Any]:
    """A profile's notebook parameters with one sabotage applied on top.

    Parameters
    ----------
    params
        The profile's parameters (``reproduce/profiles/<profile>.yaml``).
    kind
        A key of :data:`SABOTAGES`.
    declared
        The parameters the notebooks declare: the epoch and override parameters are set where
        a notebook declares them, whether or not the profile states them.

    Returns
    -------
    dict
        A new mapping; ``params`` is left unchanged.

    Raises
    ------
    ValueError
        ``kind`` is unknown, or it sets ``sabotage`` and no notebook declares that parameter.
    """
    change = SABOTAGES[parse_kinds(kind)[0]]
    out = dict(params)
    if "epochs" in change:
        out.update({k: change["epochs"] for k in _EPOCH_PARAMETERS if k in declared})
    for key in _OVERRIDE_PARAMETERS:
        if key in declared:
            out[key] = {**(params.get(key) or {}), **change.get("overrides", {})}
    if "sabotage" in change:
        if "sabotage" not in declared:
            raise ValueError(f"sabotage {kind!r} needs notebooks that declare 'sabotage'")
        out["sabotage"] = change["sabotage"]
    return out


def band_matrix(
    expected: Mapping[str, Mapping[str, Any]],
    good: Mapping[str, Any],
    runs: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Each band read against the good run and against every sabotaged run.

    Parameters
    ----------
    expected
        Band name -> spec (:func:`reproduce.load_expected`), each with a ``group``.
    good
        Metrics of the good run.
    runs
        Sabotage name -> the metrics that sabotaged run wrote.

    Returns
    -------
    list of dict
        Per band: ``metric``, ``group``, ``good`` and ``good_ok``, ``values`` (sabotage ->
        value, ``"MISSING"`` where the run wrote none), ``missed_by`` (the sabotages whose value
        fails the band).
    """
    from reproduce._bands import check_metrics

    rows = []
    for name, spec in expected.items():
        values = {kind: metrics.get(name, "MISSING") for kind, metrics in runs.items()}
        rows.append(
            {
                "metric": name,
                "group": spec["group"],
                "good": good.get(name, "MISSING"),
                "good_ok": name in good and check_metrics(good[name], spec),
                "values": values,
                "missed_by": [k for k, v in values.items() if not check_metrics(v, spec)],
            }
        )
    return rows


def unearned(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The model bands that no sabotaged run misses: checks that prove nothing."""
    return [r["metric"] for r in rows if r["group"] == MODEL_GROUP and not r["missed_by"]]


def broken_claims(
    rows: Sequence[Mapping[str, Any]], expected: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Bands whose ``rejects`` names a sabotage that was run and that the band let pass."""
    out = []
    for r in rows:
        named = expected[r["metric"]].get("rejects", [])
        passed = [k for k in named if k in r["values"] and k not in r["missed_by"]]
        if passed:
            out.append(f"{r['metric']} (passes {', '.join(passed)})")
    return out


def format_matrix(rows: Sequence[Mapping[str, Any]]) -> str:
    """The band-by-sabotage table as Markdown: each band, its good and sabotaged values."""
    kinds = list(rows[0]["values"]) if rows else []

    def cell(value: Any, missed: bool) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f"**{text}**" if missed else text

    lines = [
        "| band | group | good | " + " | ".join(kinds) + " | missed by |",
        "|" + "---|" * (len(kinds) + 4),
    ]
    for r in rows:
        cells = [cell(r["values"][k], k in r["missed_by"]) for k in kinds]
        good = cell(r["good"], not r["good_ok"])
        missed = ", ".join(r["missed_by"]) or "none"
        lines.append(f"| {r['metric']} | {r['group']} | {good} | {' | '.join(cells)} | {missed} |")
    lines.append("")
    lines.append("Bold: the value misses the band.")
    return "\n".join(lines)


def _git(*args: str) -> str:
    run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {run.stderr.strip()}")
    return run.stdout.strip()


def provenance(command: Sequence[str]) -> dict[str, Any]:
    """Where a record comes from: the commit, its state, the environment and the command.

    ``dirty`` lists the changed files under :data:`NUMERICS_PATHS`; a record taken from a dirty
    tree is not the commit's and fails ``tests/test_expected_values.py``.
    """
    import numpy as np
    import torch

    from interscale.nn import cpu_kernel_status

    kernel = cpu_kernel_status()
    try:
        commit = _git("rev-parse", "HEAD")
        status = _git("status", "--porcelain", "--", *NUMERICS_PATHS)
        dirty = sorted(line[3:] for line in status.splitlines() if line.strip())
    except (OSError, RuntimeError) as exc:
        commit, dirty = f"unknown ({exc})", ["(no git)"]
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        processor = names[0] if names else processor
    except OSError:
        pass
    return {
        "commit": commit,
        "dirty": dirty,
        "recorded": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(command),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": processor,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_kernel": {"compiler": kernel.compiler, "flags": kernel.flags},
    }
