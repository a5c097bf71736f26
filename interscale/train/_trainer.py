"""The training loop: masked self-supervision, validation, early stopping, resumable state.

One loop serves one process and data-parallel training alike: a single process is rank 0 of a
world of one (:func:`~interscale.train._distributed.single_process`), and ``"ddp"`` runs the
same loop in every process of a ``torch.distributed`` group with the module wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interscale.graphs import SampleGraph
from interscale.train._distributed import (
    DistContext,
    barrier,
    check_strategy,
    setup_distributed,
    single_process,
    teardown_distributed,
)
from interscale.train._epoch import evaluate_masked, train_epoch
from interscale.train._losses import make_loss
from interscale.train._precision import check_precision
from interscale.train._settings import TrainResult, TrainSettings
from interscale.train._state import (
    STATE_FILE,
    EarlyStopping,
    check_resumable,
    load_state,
    save_state,
)

__all__ = ["fit"]


def _lr_lambda(warmup_steps: int, total_steps: int, cosine: bool = True):
    """Linear warmup over ``warmup_steps``, then a cosine decay to zero at ``total_steps``
    (or a constant rate when ``cosine`` is false)."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _Run:
    """The optimiser, schedule and generators of one run, which the training state saves."""

    def __init__(self, module: torch.nn.Module, settings: TrainSettings, n_train: int) -> None:
        total_steps = settings.max_epochs * math.ceil(n_train / settings.batch_size)
        self.optimizer = torch.optim.AdamW(
            module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(settings.warmup_steps, total_steps, settings.cosine)
        )
        self.mask_gen = torch.Generator().manual_seed(settings.seed)
        self.shuffle_gen = torch.Generator().manual_seed(settings.seed + 1)

    def state(self, module, history, stopper, epoch, settings, ctx) -> dict:
        """The resumable state after ``epoch`` (key names are a file format: keep them)."""
        return {
            "module": module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "mask_gen": self.mask_gen.get_state(),
            "shuffle_gen": self.shuffle_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
            **stopper.as_state(),
            "epoch": epoch,
            "max_epochs": settings.max_epochs,
            "world_size": ctx.world_size,
        }

    def restore(self, state: dict, module, stopper: EarlyStopping, ctx: DistContext) -> None:
        """Put a saved state back into the module, optimiser, generators and stopper."""
        module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.mask_gen.set_state(state["mask_gen"])
        self.shuffle_gen.set_state(state["shuffle_gen"])
        # a one-process state (world size 1) has only rank 0's generator
        torch.set_rng_state(state.get("torch_rng_ranks", [state["torch_rng"]])[ctx.rank])
        stopper.restore(state)


def fit(
    module: torch.nn.Module,
    train_graphs: Sequence[SampleGraph],
    val_graphs: Sequence[SampleGraph],
    settings: TrainSettings,
    device: torch.device,
) -> TrainResult:
    """Train ``module`` with masked self-supervision and restore the best-validation weights.

    Parameters
    ----------
    module
        An :class:`interscale.model._module.InterScaleModule`.
    train_graphs, val_graphs
        Sample graphs of the two splits; ``val_graphs`` may be empty (then the training loss
        drives early stopping and best-weight selection).
    settings
        Optimiser, schedule, masking and stopping settings. ``settings.strategy="ddp"`` trains
        data-parallel in a ``torch.distributed`` process group (the one already initialised, or
        one created from the ``torchrun`` environment and destroyed at the end): each rank
        trains on its share of every global batch of ``batch_size`` graphs; validation numbers,
        early stopping and the final (best) weights are the same on every rank, and only rank 0
        writes the training state and shows the progress bar.
    device
        Where to train (under ``"ddp"`` a CUDA device becomes ``cuda:<LOCAL_RANK>``).

    Returns
    -------
    The history (one row per epoch) and the best epoch. The module holds the best weights.

    Raises
    ------
    ValueError
        Without training graphs, on an unknown strategy, or for ``"ddp"`` outside a process group
        and outside ``torchrun``.
    FloatingPointError
        If the training loss becomes NaN or infinite.
    """
    if not train_graphs:
        raise ValueError("no training samples: the split column has no 'train' samples")
    if check_strategy(settings.strategy) == "single":
        return _fit(module, train_graphs, val_graphs, settings, single_process(device))
    ctx = setup_distributed(device)
    try:
        if ctx.is_main and settings.batch_size < ctx.world_size:
            warnings.warn(
                f"batch_size={settings.batch_size} is smaller than the {ctx.world_size} "
                "processes: the global batch is shared out, so some ranks idle every step; "
                "use a batch_size of at least (ideally a multiple of) the number of processes",
                UserWarning,
                stacklevel=3,  # the model.train() call
            )
        return _fit(module, train_graphs, val_graphs, settings, ctx)
    finally:
        teardown_distributed(ctx)


def _fit(
    module: torch.nn.Module,
    train_graphs: Sequence[SampleGraph],
    val_graphs: Sequence[SampleGraph],
    settings: TrainSettings,
    ctx: DistContext,
) -> TrainResult:
    """Run the epochs on this rank: train, validate, keep the best weights, save, stop."""
    check_precision(settings.precision)
    module.to(ctx.device)
    loss_fn = make_loss(settings.loss)
    run = _Run(module, settings, len(train_graphs))
    # Ranks share the mask and shuffle generators but not dropout: seed + rank.
    torch.manual_seed(settings.seed + ctx.rank)
    stopper = EarlyStopping(
        settings.early_stopping, settings.patience, settings.min_delta, settings.min_epochs
    )
    stopper.best_state = copy.deepcopy(module.state_dict())
    state_path = Path(settings.checkpoint_dir) / STATE_FILE if settings.checkpoint_dir else None
    history, start_epoch = _resume(settings, state_path, run, module, stopper, ctx)
    net = _wrap(module, ctx)
    bar = tqdm(
        range(start_epoch, settings.max_epochs),
        total=settings.max_epochs,
        initial=start_epoch,
        desc="training",
        unit="epoch",
        disable=not settings.progress_bar or not ctx.is_main,
        leave=True,
    )
    for epoch in bar:
        if stopper.stopped:
            break
        t0 = time.perf_counter()
        module.train()
        row = {"epoch": epoch}
        row.update(
            train_epoch(
                net, train_graphs, settings, run.mask_gen, run.shuffle_gen,
                run.optimizer, run.scheduler, loss_fn, ctx, epoch,
            )
        )  # fmt: skip
        if val_graphs:
            val = evaluate_masked(
                module,
                val_graphs,
                batch_size=settings.batch_size,
                pct_mask_nodes=settings.pct_mask_nodes,
                seed=settings.seed + 2,
                loss=settings.loss,
                ctx=ctx,
                precision=settings.precision,
            )
            row.update({f"val_{k}": v for k, v in val.items()})
        row["lr"] = run.optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        row["best"] = stopper.update(row.get("val_loss", row["train_loss"]), epoch, module, ctx)
        history.append(row)
        bar.set_postfix({k[:-5]: f"{row[k]:.4f}" for k in ("train_loss", "val_loss") if k in row})
        last = stopper.stopped or epoch == settings.max_epochs - 1
        if state_path is not None and ((epoch + 1) % settings.checkpoint_every == 0 or last):
            save_state(run.state(module, history, stopper, epoch, settings, ctx), state_path, ctx)
        if stopper.stopped:
            break
    bar.close()
    if ctx.distributed:
        del net  # drops DDP's gradient hooks from the module's parameters
        barrier(ctx)
    module.load_state_dict(stopper.best_state)
    return TrainResult(_history_frame(history), stopper.best_epoch, float(stopper.best_val),
                       stopper.stopped)  # fmt: skip


def _resume(settings, state_path, run: _Run, module, stopper, ctx) -> tuple[list[dict], int]:
    """The history so far and the first epoch to run (a saved state restored when resuming)."""
    if not settings.resume:
        return [], 0
    if state_path is None:
        raise ValueError("resume=True needs checkpoint_dir")
    state = load_state(state_path, ctx)
    if state is None:
        return [], 0
    check_resumable(state, state_path, settings.max_epochs, ctx.world_size)
    run.restore(state, module, stopper, ctx)
    return state["history"], state["epoch"] + 1


def _wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The module as this rank trains it: wrapped by DDP in a process group, else itself."""
    if not ctx.distributed:
        return module
    # Every parameter takes part in every step (probed over the model variants), so no
    # unused-parameter search is needed.
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def _history_frame(history: list[dict]) -> pd.DataFrame:
    """One row per epoch; NaN (not None) where a value is missing."""
    frame = pd.DataFrame(history)
    if frame.empty:
        frame = pd.DataFrame(columns=["epoch", "train_loss", "lr", "seconds"])
    return frame.replace({None: np.nan})
