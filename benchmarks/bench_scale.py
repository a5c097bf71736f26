"""Large sections: one training step on one very large sample, and streaming inference.

``LargeSampleStep`` times one optimisation step (forward + backward + AdamW) of the published
configuration (``config_files/legnini_example.yaml``: GCN + Transformer, both linear decoders,
88 genes, 30 % of the cells masked) on ONE sample of 20,000 / 50,000 / 100,000 cells with the
``full`` attention scope and of 1,000,000 cells with the ``neighbourhood`` scope. The data are
uniform random points with a radius-200 graph of about 10 neighbours per cell and random
log-counts: the cost does not depend on the values.

On 2 CPU cores a step takes 5-6 s at 20,000 cells and minutes above (the ``full`` scope is
quadratic in the sample size; ``TrainStep`` already times the 20,000-cell CPU step), so the CPU
sizes are opt-in: ``INTERSCALE_BENCH_SCALE=1``; without it their ``setup`` raises
NotImplementedError and asv reports them as skipped. On CUDA every size runs. In smoke
mode (``INTERSCALE_BENCH_SMOKE=1``) a single reduced case (``full``, 2,000 cells) runs.

``LargeSampleStepKernel`` times the same step on CUDA with the attention kernel forced:
``flex`` (FlexAttention over the packed sequence, what ``auto`` picks on CUDA) at 20,000 /
100,000 / 1,000,000 cells for ``full`` and ``long_range``, and ``math`` (the blocked algorithm,
what CUDA ran before and still runs under deterministic algorithms) up to 100,000 cells. Its CPU
parameters are always skipped (FlexAttention runs eagerly on CPU, materialising the scores), except
in smoke mode, where one 2,000-cell ``full`` step with ``flex`` checks the code path.

``TiledModelOutput`` runs ``get_model_output`` (masked, ``neighbourhood`` scope) on one section
of 20,000 / 200,000 cells split by :func:`interscale.pp.tile` into 16 tiles with a
100-micrometre halo: tiles are built and processed one at a time and write straight
into the preallocated outputs. ``track_extra_memory_over_outputs`` is the growth of the resident
memory during the call divided by the bytes of the outputs it writes (1.0 = nothing beyond the
outputs themselves).
"""

from __future__ import annotations

import os
import threading
import time
import warnings

import numpy as np

from ._common import DEVICES, SLOW_ATTRS, SMOKE, published_config, random_points, require_device

#: Opt-in switch for the CPU sizes that take minutes per step.
SCALE: bool = os.environ.get("INTERSCALE_BENCH_SCALE", "").strip().lower() not in (
    "",
    "0",
    "false",
)
#: Largest CPU size that runs without ``INTERSCALE_BENCH_SCALE``.
CPU_DEFAULT_MAX = 20_000
#: The same for ``LargeSampleStep``: none, since ``TrainStep`` already times a 20,000-cell
#: ``full`` step on CPU and the quick CPU suite must stay under 15 minutes.
STEP_CPU_DEFAULT_MAX = 0
N_GENES = 88
RADIUS = 200.0
MEAN_DEGREE = 10.0

CASES = (
    ["full-2000"] if SMOKE else ["full-20000", "full-50000", "full-100000", "neighbourhood-1000000"]
)
#: ``LargeSampleStepKernel``: scope-cells cases (CUDA only, but for the smoke case).
KERNEL_SCOPES = ("full", "long_range")
KERNEL_CASES = (
    ["full-2000"]
    if SMOKE
    else [f"{scope}-{cells}" for cells in (20_000, 100_000, 1_000_000) for scope in KERNEL_SCOPES]
)
#: Largest sample the blocked ``math`` kernel is timed at (quadratic time, minutes above).
MATH_MAX_CELLS = 100_000
OUTPUT_CELLS = [5_000] if SMOKE else [20_000, 200_000]
#: Tiles hold at most cells / TILES cells (the k-d split gives 16 tiles; 4 in smoke mode).
TILES = 3 if SMOKE else 10
HALO = 100.0


def _parse(case: str) -> tuple[str, int]:
    scope, cells = case.rsplit("-", 1)
    return scope, int(cells)


def _check_size(device: str, cells: int, cpu_max: int = CPU_DEFAULT_MAX) -> None:
    """Skip the long CPU sizes unless they were asked for, and CUDA where it is absent."""
    if device == "cpu" and cells > cpu_max and not SCALE and not SMOKE:
        raise NotImplementedError(
            f"{cells} cells on CPU take minutes per run; set INTERSCALE_BENCH_SCALE=1 to run them"
        )
    require_device(device)


def section(cells: int, seed: int = 0):
    """One sample of ``cells`` uniform random points, random log-counts, radius-200 graph.

    Parameters
    ----------
    cells
        Number of cells.
    seed
        Seed of the numpy Generator.

    Returns
    -------
    anndata.AnnData
        With ``layers["log1p_norm"]`` (float32, 88 genes), ``obs["sample"]``, ``obs["split"]``
        and ``obsp["spatial_connectivities"]``.
    """
    import anndata as ad
    import pandas as pd

    import interscale as isc

    rng = np.random.default_rng(seed)
    coords = random_points(cells, MEAN_DEGREE, RADIUS, seed)
    expr = np.log1p(rng.poisson(1.0, (cells, N_GENES)).astype(np.float32))
    obs = pd.DataFrame(
        {"sample": pd.Categorical(["section"] * cells), "split": "train"},
        index=pd.RangeIndex(cells).astype(str),
    )
    var = pd.DataFrame(index=[f"G{i:03d}" for i in range(N_GENES)])
    adata = ad.AnnData(obs=obs, var=var)
    adata.layers["log1p_norm"] = expr
    adata.obsm["spatial"] = coords
    isc.pp.spatial_neighbors(adata, radius=RADIUS, library_key="sample")
    return adata


def _module(device: str, scope: str):
    """The published model's module (88 genes) built on a tiny stand-in AnnData."""
    from ._common import organoids, setup_model

    cfg = published_config(device, **{"model.global_component.parameters.attention": scope})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = setup_model(organoids(n_samples=2, cells=100, seed=0), cfg)
    return model.module.to(device), cfg


class LargeSampleStep:
    """Forward + backward + AdamW on one sample: ``full`` up to 100k cells, ``neighbourhood`` 1M."""

    params = (DEVICES, CASES)
    param_names = ["device", "case"]

    def setup(self, device: str, case: str) -> None:
        """Random section, the published module, a 30 % mask and the optimiser."""
        scope, cells = _parse(case)
        _check_size(device, cells, STEP_CPU_DEFAULT_MAX)
        import torch

        from interscale.graphs import GraphBatch, anndata_to_graphs
        from interscale.train import draw_mask, make_loss

        adata = section(cells)
        graph = anndata_to_graphs(adata, layer_key="log1p_norm", sample_keys=["sample"])[0]
        del adata
        self.batch = GraphBatch.collate([graph]).to(device)
        del graph
        self.module, cfg = _module(device, scope)
        self.module.train()
        self.mask = draw_mask(
            self.batch.ptr, cfg.dataset.pct_mask_nodes, torch.Generator().manual_seed(0)
        ).to(device)
        self.loss_fn = make_loss(cfg.optim.loss)
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=cfg.optim.lr)
        self.device = device
        if device == "cuda":
            # warm the kernels and the allocator: a cold first CUDA step measures start-up
            self._step()
            torch.cuda.reset_peak_memory_stats()

    def _step(self) -> None:
        b, mask = self.batch, self.mask
        self.opt.zero_grad(set_to_none=True)
        out = self.module(b.x, b.edge_index, b.ptr, mask=mask, features=b.features)
        target = b.x[mask]
        losses = [
            self.loss_fn(y[mask], target) for y in (out.y_local, out.y_global) if y is not None
        ]
        (sum(losses) / len(losses)).backward()
        self.opt.step()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def time_step(self, device: str, case: str) -> None:
        """Wall time of one training step."""
        self._step()

    def peakmem_step(self, device: str, case: str) -> None:
        """Peak RSS of the process over setup and one step (host memory, also on CUDA)."""
        self._step()

    def track_cuda_peak_gib(self, device: str, case: str) -> float:
        """Peak CUDA memory allocated by one step, GiB (NaN on CPU)."""
        if device != "cuda":
            return float("nan")
        import torch

        self._step()
        return torch.cuda.max_memory_allocated() / 2**30

    track_cuda_peak_gib.unit = "GiB"


class LargeSampleStepKernel(LargeSampleStep):
    """One-sample step on CUDA with the kernel forced: ``flex`` up to 1M cells, ``math`` to 100k."""

    params = (DEVICES, KERNEL_CASES, ["flex", "math"])
    param_names = ["device", "case", "kernel"]

    def setup(self, device: str, case: str, kernel: str) -> None:
        """As :class:`LargeSampleStep`, then the global encoder's kernel is set to ``kernel``."""
        _, cells = _parse(case)
        if device == "cpu" and not (SMOKE and kernel == "flex"):
            raise NotImplementedError("forced attention kernels are CUDA benchmarks")
        if kernel == "math" and cells > MATH_MAX_CELLS:
            raise NotImplementedError(
                f"the blocked kernel is quadratic: skipped above {MATH_MAX_CELLS} cells"
            )
        require_device(device)
        self._kernel = kernel
        super().setup(device, case)

    def _step(self) -> None:
        self.module.global_encoder.kernel = self._kernel
        super()._step()

    def time_step(self, device: str, case: str, kernel: str) -> None:
        """Wall time of one training step."""
        self._step()

    def peakmem_step(self, device: str, case: str, kernel: str) -> None:
        """Peak RSS over setup and one step."""
        self._step()

    def track_cuda_peak_gib(self, device: str, case: str, kernel: str) -> float:
        """Peak CUDA memory allocated by one step, GiB (NaN on CPU)."""
        return super().track_cuda_peak_gib(device, case)

    track_cuda_peak_gib.unit = "GiB"


class _RssSampler:
    """Largest resident set size seen while the ``with`` block runs (Linux /proc), bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self.start = self.rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _release_free_heap() -> None:
    """Hand memory freed by setup back to the OS (glibc), so that RSS growth is all new."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def output_bytes(adata, prefix: str = "") -> int:
    """Bytes of everything ``get_model_output`` writes (dense arrays and the CSR attention)."""
    total = 0
    for store, key in [
        ("obsm", "_local_emb"),
        ("obsm", "_global_emb"),
        ("layers", "_y_pred_local"),
        ("layers", "_y_pred_global"),
    ]:
        value = getattr(adata, store).get(f"{prefix}{key}")
        total += 0 if value is None else value.nbytes
    attn = adata.obsp.get(f"{prefix}_attn_matrix")
    if attn is not None:
        total += attn.data.nbytes + attn.indices.nbytes + attn.indptr.nbytes
    if f"{prefix}_cls_attention" in adata.obs:
        total += adata.obs[f"{prefix}_cls_attention"].to_numpy().nbytes
    return total


class TiledModelOutput:
    """``get_model_output`` (masked) streamed over tiles with a halo, ``neighbourhood`` scope."""

    params = (DEVICES, OUTPUT_CELLS)
    param_names = ["device", "cells"]

    def setup(self, device: str, cells: int) -> None:
        """Random section in 16 tiles with a 100 um halo, registered; untrained model."""
        _check_size(device, cells)
        import interscale as isc
        from interscale.model import CombinedModel

        adata = section(cells)
        isc.pp.tile(adata, max_cells=cells // TILES, library_key="sample", halo=HALO)
        # setup needs a train and a val unit: alternate the tiles
        codes = adata.obs["tile"].cat.codes.to_numpy()
        adata.obs["split"] = np.where(codes % 2 == 0, "train", "val")
        # the published name, which every commit asv measures has (setup_anndata is newer)
        CombinedModel._setup_anndata(
            adata,
            layer_key="log1p_norm",
            sample_key_list=["tile"],
            split_key="split",
            halo_key="tile_halo",
            view_registry=False,
        )
        cfg = published_config(
            device, **{"model.global_component.parameters.attention": "neighbourhood"}
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = CombinedModel(adata, cfg)
        self.model.module.to(device)
        import tqdm.auto  # noqa: F401  (imported lazily by get_model_output; keep it untimed)

        self.adata = adata
        self.device = device

    def _run(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.get_model_output(self.adata, masked=True)
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def time_get_model_output_tiled(self, device: str, cells: int) -> None:
        """Wall time of one call."""
        self._run()

    def peakmem_get_model_output_tiled(self, device: str, cells: int) -> None:
        """Peak RSS over setup and one call."""
        self._run()

    def track_extra_memory_over_outputs(self, device: str, cells: int) -> float:
        """Resident-memory growth during the call / bytes of the outputs written (ratio)."""
        if not os.path.exists("/proc/self/statm"):
            return float("nan")
        _release_free_heap()
        with _RssSampler() as rss:
            self._run()
        return (rss.peak - rss.start) / output_bytes(self.adata)

    track_extra_memory_over_outputs.unit = "ratio"


for _cls in (LargeSampleStep, LargeSampleStepKernel, TiledModelOutput):
    for _name, _value in SLOW_ATTRS.items():
        setattr(_cls, _name, _value)
# One 100k-cell full-attention step takes about 10 minutes on 2 CPU cores, setup included.
LargeSampleStep.timeout = 3600
LargeSampleStepKernel.timeout = 3600
TiledModelOutput.timeout = 1800
del _cls, _name, _value
