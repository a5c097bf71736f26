"""Training cost: one optimisation step per attention scope and size, one full epoch.

The step uses the model's own module and loss with the published (Legnini) configuration: the
local GNN, the global Transformer and both linear decoders, 30 % of the cells masked, AdamW.
"""

from __future__ import annotations

import warnings

from ._common import (
    DEVICES,
    SLOW_ATTRS,
    legnini_sized,
    organoids,
    published_config,
    require_device,
    sizes,
    sync,
)

SCOPES = ["full", "neighbourhood", "long_range"]


class TrainStep:
    """Forward + backward + optimiser step on one sample of ``cells`` cells (88 genes)."""

    params = (DEVICES, sizes([1000, 4318, 20000]), SCOPES)
    param_names = ["device", "cells", "scope"]
    number = 1
    repeat = (1, 3, 20.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 600

    def setup(self, device: str, cells: int, scope: str) -> None:
        """Build a two-sample dataset, the module, a mask and the optimiser."""
        require_device(device)
        import torch

        from interscale.graphs import GraphBatch, anndata_to_graphs
        from interscale.train import draw_mask, make_loss

        from ._common import setup_model

        adata = organoids(n_samples=2, cells=cells, seed=0)
        cfg = published_config(device, **{"model.global_component.parameters.attention": scope})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = setup_model(adata, cfg)
        graph = anndata_to_graphs(adata, layer_key="log1p_norm", sample_keys=["sample"])[0]
        self.batch = GraphBatch.collate([graph]).to(device)
        self.module = model.module.to(device).train()
        self.mask = draw_mask(
            self.batch.ptr, cfg.dataset.pct_mask_nodes, torch.Generator().manual_seed(0)
        ).to(device)
        self.loss_fn = make_loss(cfg.optim.loss)
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=cfg.optim.lr)
        self.device = device
        # One untimed step creates the optimiser state and warms the allocator; skipped for the
        # largest quadratic cases, where it would double an already long setup.
        if cells <= 4318 or scope == "neighbourhood":
            self._step()

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
        sync(self.device)

    def time_step(self, device: str, cells: int, scope: str) -> None:
        """Wall time of one training step."""
        self._step()

    def peakmem_step(self, device: str, cells: int, scope: str) -> None:
        """Peak RSS of the process over setup and one training step."""
        self._step()


class TrainEpoch:
    """One full epoch (train + validation) on the Legnini-sized built-in dataset.

    17 organoids, 43,815 cells, 88 genes, split 10/5/2 samples; the published configuration
    (batch of 3 samples, SmoothL1, full attention).
    """

    params = (DEVICES,)
    param_names = ["device"]

    def setup(self, device: str) -> None:
        """Generate, preprocess and register the dataset; build the model."""
        require_device(device)
        from ._common import setup_model

        self.adata = legnini_sized()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = setup_model(self.adata, published_config(device))
        self.device = device

    def _epoch(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.train(
                max_epochs=1, early_stopping=False, progress_bar=False, accelerator=self.device
            )
        sync(self.device)

    def time_epoch(self, device: str) -> None:
        """Wall time of one epoch."""
        self._epoch()

    def peakmem_epoch(self, device: str) -> None:
        """Peak RSS over setup and one epoch."""
        self._epoch()


for _name, _value in SLOW_ATTRS.items():
    setattr(TrainEpoch, _name, _value)
del _name, _value


class AttentionCore:
    """Forward + backward of the ``full`` attention core of one sample on the CPU, per kernel.

    One layer's attention as the published model runs it (4 heads of dimension 4, the sample's
    cells and its CLS token): ``cpu`` is InterScale's C kernel (what ``auto`` runs on the CPU),
    ``flash`` PyTorch's fused flash kernel in row blocks (what ran before). 2,578 cells is the
    mean Legnini-shaped sample, 4,318 its largest.
    """

    params = (sizes([2578, 4318, 10000]), ["cpu", "flash"])
    param_names = ["cells", "kernel"]
    number = 1
    repeat = (3, 10, 20.0)
    rounds = 1
    warmup_time = 0.0

    def setup(self, cells: int, kernel: str) -> None:
        """Random queries, keys, values and an output gradient; one warm-up call."""
        import torch

        from interscale.nn import cpu_kernel_status
        from interscale.nn._attention import flash_kernel_available
        from interscale.nn._masks import KeyMask

        if kernel == "cpu" and not cpu_kernel_status().available:
            raise NotImplementedError(f"C kernel unavailable: {cpu_kernel_status().detail}")
        if kernel == "flash" and not flash_kernel_available(torch.zeros(1)):
            raise NotImplementedError("PyTorch's fused CPU flash kernel is unavailable")
        generator = torch.Generator().manual_seed(0)
        shape = (1, 4, cells + 1, 4)
        self.qkv = [torch.randn(shape, generator=generator).requires_grad_() for _ in range(3)]
        self.grad = torch.randn(shape, generator=generator)
        self.key_mask = KeyMask(cells)
        self.kernel = kernel
        self._run()

    def _run(self) -> None:
        from interscale.nn._attention import blocked_attention

        q, k, v = self.qkv
        for t in self.qkv:
            t.grad = None
        blocked_attention(q, k, v, self.key_mask, kernel=self.kernel).backward(self.grad)

    def time_forward_backward(self, cells: int, kernel: str) -> None:
        """Wall time of the forward and backward pass."""
        self._run()
