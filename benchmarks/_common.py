"""Shared helpers of the asv benchmarks: smoke switch, devices, data and configuration.

``INTERSCALE_BENCH_SMOKE=1`` restricts every size parameter to its smallest value, so that the
whole suite runs once in a few minutes (CI smoke run, see ``benchmarks/smoke.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

SMOKE: bool = os.environ.get("INTERSCALE_BENCH_SMOKE", "").strip().lower() not in ("", "0", "false")

#: Devices every torch benchmark is parameterised over; "cuda" is skipped where it is absent.
DEVICES: list[str] = ["cpu", "cuda"]

#: Repository root of the benchmark suite (the config files live there).
ROOT: Path = Path(__file__).resolve().parents[1]

#: Long benchmarks: one run, one round, generous timeout.
SLOW_ATTRS: dict[str, Any] = {
    "number": 1,
    "repeat": 1,
    "rounds": 1,
    "warmup_time": 0.0,
    "timeout": 600,
}


def legnini_sized():
    """The Legnini-sized built-in dataset (17 organoids, 43,815 cells, 88 genes), preprocessed.

    In smoke mode a reduced stand-in (3 organoids of 1,000 cells) keeps the run short.

    Returns
    -------
    anndata.AnnData
        Output of :func:`organoids`.
    """
    return organoids(n_samples=3, cells=1000) if SMOKE else organoids()


def sizes(values: list) -> list:
    """The size parameters to benchmark: all of them, or only the smallest in smoke mode.

    Parameters
    ----------
    values
        Parameter values in increasing order of cost.

    Returns
    -------
    list
        ``values`` or ``values[:1]``.
    """
    return list(values[:1]) if SMOKE else list(values)


#: Device files that exist on Linux wherever a GPU driver torch could use is loaded (NVIDIA,
#: ROCm, WSL2).
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def _no_gpu_driver() -> bool:
    """True when this Linux machine has no GPU driver at all, decided without importing torch.

    asv starts one process per parameter combination; importing torch only to learn that CUDA
    is absent cost about 2.5 s in each of the ~60 skipped combinations of the quick suite.
    """
    return sys.platform == "linux" and not any(os.path.exists(p) for p in _GPU_DEVICE_FILES)


def require_device(device: str) -> None:
    """Skip (asv: NotImplementedError in setup) a benchmark whose device is not available.

    Parameters
    ----------
    device
        ``"cpu"`` or ``"cuda"``.

    Raises
    ------
    NotImplementedError
        ``device`` is ``"cuda"`` and CUDA is not available.
    """
    if device != "cuda":
        return
    if _no_gpu_driver():
        raise NotImplementedError("CUDA is not available on this machine (no GPU driver)")
    import torch

    if not torch.cuda.is_available():
        raise NotImplementedError("CUDA is not available on this machine")


def sync(device: str) -> None:
    """Wait for queued CUDA kernels so that timings cover the whole computation."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def published_config(device: str = "cpu", **overrides: Any):
    """The published Legnini configuration (``config_files/legnini_example.yaml``).

    Parameters
    ----------
    device
        Value of ``optim.accelerator``.
    **overrides
        Dotted config keys to override (e.g. ``{"optim.seed": 1}`` via ``**{...}``).

    Returns
    -------
    interscale.config.Config
    """
    from interscale.config import load_config, with_overrides

    cfg = load_config(str(ROOT / "config_files" / "legnini_example.yaml"))
    return with_overrides(cfg, {"optim.accelerator": device, **overrides})


def organoids(n_samples: int = 17, cells: int | tuple[int, int] = (1640, 4318), seed: int = 0):
    """Built-in synthetic organoids, normalised, with the radius-200 spatial graph.

    Parameters
    ----------
    n_samples
        Number of organoids.
    cells
        Cells per organoid (fixed or a ``(min, max)`` range).
    seed
        Dataset seed.

    Returns
    -------
    anndata.AnnData
        With ``layers["log1p_norm"]`` and ``obsp["spatial_connectivities"]``.
    """
    import interscale as isc

    adata = isc.datasets.synthetic_organoids(n_samples=n_samples, cells_per_sample=cells, seed=seed)
    isc.pp.normalize(adata, key_added="log1p_norm")
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    return adata


def register(adata, cls_name: str = "CombinedModel") -> None:
    """Register ``adata`` for a model class (layer ``log1p_norm``, samples, split).

    Parameters
    ----------
    adata
        Output of :func:`organoids`.
    cls_name
        Model class in :mod:`interscale.model`.
    """
    import interscale.model as models

    # the published name, which every commit asv measures has (setup_anndata is newer)
    getattr(models, cls_name)._setup_anndata(
        adata,
        layer_key="log1p_norm",
        sample_key_list=["sample"],
        split_key="split",
        view_registry=False,
    )


def setup_model(adata, cfg, cls_name: str = "CombinedModel"):
    """Register ``adata`` and build an (untrained) model with ``cfg``.

    Parameters
    ----------
    adata
        Output of :func:`organoids`.
    cfg
        Model configuration.
    cls_name
        Model class in :mod:`interscale.model`.

    Returns
    -------
    The model.
    """
    import interscale.model as models

    register(adata, cls_name)
    return getattr(models, cls_name)(adata, cfg)


def random_points(n: int, mean_degree: float, radius: float, seed: int) -> np.ndarray:
    """Uniform 2D points in a square sized so that a radius graph has ``mean_degree`` edges.

    Parameters
    ----------
    n
        Number of points.
    mean_degree
        Expected neighbours per point within ``radius``.
    radius
        Neighbourhood radius.
    seed
        Seed of the numpy Generator.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` float64 coordinates.
    """
    side = np.sqrt(n * np.pi * radius**2 / mean_degree)
    return np.random.default_rng(seed).random((n, 2)) * side
