"""The training loop: masked self-supervision, validation, early stopping, resumable checkpoints."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interscale._io import atomic_file
from interscale.graphs import GraphBatch, SampleGraph, iterate_batches
from interscale.train._losses import make_loss
from interscale.train._masking import draw_mask

__all__ = ["TrainSettings", "TrainResult", "fit", "evaluate_masked", "resolve_device"]

_STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainSettings:
    """Everything the loop needs besides the module and the graphs."""

    max_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    loss: str
    pct_mask_nodes: float
    seed: int
    early_stopping: bool = True
    patience: int = 5
    min_delta: float = 0.0
    min_epochs: int = 0
    grad_clip: float | None = None
    progress_bar: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    resume: bool = False


@dataclass
class TrainResult:
    """What training produced."""

    history: pd.DataFrame
    best_epoch: int
    best_val_loss: float
    stopped_early: bool


def resolve_device(accelerator: str | None) -> torch.device:
    """Map ``auto``/``cpu``/``cuda``/``gpu`` to a torch device, failing clearly without CUDA."""
    accelerator = (accelerator or "auto").lower()
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ValueError("accelerator 'cuda' was requested but CUDA is not available here")
        return torch.device("cuda")
    if accelerator == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown accelerator {accelerator!r}; choose auto, cpu or cuda")


def _lr_lambda(warmup_steps: int, total_steps: int):
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _R2Accumulator:
    """Per-gene sums to compute R^2 over all masked cells of an epoch without storing them."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_y = self.sum_y2 = None
        self.sum_res = {}

    def add(self, target: torch.Tensor, preds: dict[str, torch.Tensor]) -> None:
        target = target.double()
        if self.sum_y is None:
            self.sum_y = torch.zeros(target.shape[1], dtype=torch.float64)
            self.sum_y2 = torch.zeros_like(self.sum_y)
        self.n += target.shape[0]
        self.sum_y += target.sum(0).cpu()
        self.sum_y2 += (target * target).sum(0).cpu()
        for head, pred in preds.items():
            res = ((target - pred.double()) ** 2).sum(0).cpu()
            self.sum_res[head] = self.sum_res.get(head, 0) + res

    def r2(self) -> dict[str, float]:
        if self.n < 2:
            return {head: float("nan") for head in self.sum_res}
        ss_tot = self.sum_y2 - self.sum_y**2 / self.n
        out = {}
        for head, ss_res in self.sum_res.items():
            valid = ss_tot > 1e-12
            values = 1.0 - ss_res[valid] / ss_tot[valid]
            out[head] = float(values.mean()) if valid.any() else float("nan")
        return out


def _step_losses(module, batch: GraphBatch, mask: torch.Tensor, loss_fn):
    out = module(batch.x, batch.edge_index, batch.ptr, mask=mask, features=batch.features)
    target = batch.x[mask]
    losses, preds = {}, {}
    if out.y_local is not None:
        preds["local"] = out.y_local[mask]
        losses["local"] = loss_fn(preds["local"], target)
    if out.y_global is not None:
        preds["global"] = out.y_global[mask]
        losses["global"] = loss_fn(preds["global"], target)
    total = sum(losses.values()) / len(losses)
    return total, losses, preds, target


@torch.no_grad()
def evaluate_masked(
    module: torch.nn.Module,
    graphs: Sequence[SampleGraph],
    *,
    batch_size: int,
    pct_mask_nodes: float,
    seed: int,
    loss: str,
    device: torch.device,
) -> dict[str, float]:
    """Loss and R^2 per head on freshly masked cells of ``graphs`` (eval mode, fixed seed).

    The same seed gives the same masks, so values are comparable across epochs.
    """
    was_training = module.training
    module.eval()
    loss_fn = make_loss(loss)
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    n_cells = 0
    acc = _R2Accumulator()
    for batch in iterate_batches(graphs, batch_size):
        mask = draw_mask(batch.ptr, pct_mask_nodes, generator)
        batch = batch.to(device)
        mask = mask.to(device)
        total, losses, preds, target = _step_losses(module, batch, mask, loss_fn)
        k = int(mask.sum())
        n_cells += k
        sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) * k
        for head, value in losses.items():
            sums[f"loss_{head}"] = sums.get(f"loss_{head}", 0.0) + float(value.detach()) * k
        acc.add(target, preds)
    module.train(was_training)
    result = {key: value / max(1, n_cells) for key, value in sums.items()}
    for head, value in acc.r2().items():
        result[f"r2_{head}"] = value
    return result


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


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
        Optimiser, schedule, masking and stopping settings.
    device
        Where to train.

    Returns
    -------
    The history (one row per epoch) and the best epoch. The module holds the best weights.
    """
    if not train_graphs:
        raise ValueError("no training samples: the split column has no 'train' samples")
    module.to(device)
    loss_fn = make_loss(settings.loss)
    n_batches = math.ceil(len(train_graphs) / settings.batch_size)
    total_steps = settings.max_epochs * n_batches
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(settings.warmup_steps, total_steps)
    )
    mask_gen = torch.Generator().manual_seed(settings.seed)
    shuffle_gen = torch.Generator().manual_seed(settings.seed + 1)
    torch.manual_seed(settings.seed)

    history: list[dict] = []
    best_val = math.inf
    best_epoch = -1
    best_state = copy.deepcopy(module.state_dict())
    bad_epochs = 0
    start_epoch = 0
    stopped_early = False

    state_path = Path(settings.checkpoint_dir) / _STATE_FILE if settings.checkpoint_dir else None
    if settings.resume:
        if state_path is None:
            raise ValueError("resume=True needs checkpoint_dir")
        if state_path.exists():
            state = torch.load(state_path, map_location="cpu", weights_only=False)
            if state.get("max_epochs") != settings.max_epochs:
                raise ValueError(
                    f"cannot resume: the checkpoint in {state_path} was written for "
                    f"max_epochs={state.get('max_epochs')}, this call asks for "
                    f"{settings.max_epochs}"
                )
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            mask_gen.set_state(state["mask_gen"])
            shuffle_gen.set_state(state["shuffle_gen"])
            torch.set_rng_state(state["torch_rng"])
            history = state["history"]
            best_val, best_epoch = state["best_val"], state["best_epoch"]
            best_state = state["best_state"]
            bad_epochs = state["bad_epochs"]
            start_epoch = state["epoch"] + 1
            stopped_early = state.get("stopped_early", False)

    bar = tqdm(
        range(start_epoch, settings.max_epochs),
        total=settings.max_epochs,
        initial=start_epoch,
        desc="training",
        unit="epoch",
        disable=not settings.progress_bar,
        leave=True,
    )
    for epoch in bar:
        if stopped_early:
            break
        t0 = time.perf_counter()
        module.train()
        train_sums: dict[str, float] = {}
        n_masked = 0
        for batch in iterate_batches(
            train_graphs, settings.batch_size, shuffle=True, generator=shuffle_gen
        ):
            mask = draw_mask(batch.ptr, settings.pct_mask_nodes, mask_gen)
            batch = batch.to(device)
            mask = mask.to(device)
            optimizer.zero_grad(set_to_none=True)
            total, losses, _, _ = _step_losses(module, batch, mask, loss_fn)
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"training loss became {float(total)} at epoch {epoch}; "
                    "lower the learning rate or check the input layer for extreme values"
                )
            total.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            k = int(mask.sum())
            n_masked += k
            train_sums["loss"] = train_sums.get("loss", 0.0) + float(total.detach()) * k
            for head, value in losses.items():
                key = f"loss_{head}"
                train_sums[key] = train_sums.get(key, 0.0) + float(value.detach()) * k
        row = {"epoch": epoch}
        row.update({f"train_{k}": v / max(1, n_masked) for k, v in train_sums.items()})
        if val_graphs:
            val = evaluate_masked(
                module,
                val_graphs,
                batch_size=settings.batch_size,
                pct_mask_nodes=settings.pct_mask_nodes,
                seed=settings.seed + 2,
                loss=settings.loss,
                device=device,
            )
            row.update({f"val_{k}": v for k, v in val.items()})
            monitor = row["val_loss"]
        else:
            monitor = row["train_loss"]
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0

        # Relative improvement, written so that it also holds for negative losses (GaussianNLL).
        if not math.isfinite(best_val) or monitor < best_val - settings.min_delta * abs(best_val):
            best_val, best_epoch, bad_epochs = monitor, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            bad_epochs += 1
        row["best"] = best_epoch == epoch
        history.append(row)
        postfix = {"train": f"{row['train_loss']:.4f}"}
        if "val_loss" in row:
            postfix["val"] = f"{row['val_loss']:.4f}"
        bar.set_postfix(postfix)

        if (
            settings.early_stopping
            and bad_epochs >= settings.patience
            and epoch + 1 >= settings.min_epochs
        ):
            stopped_early = True
        if state_path is not None and (
            (epoch + 1) % settings.checkpoint_every == 0
            or stopped_early
            or epoch == settings.max_epochs - 1
        ):
            _atomic_torch_save(
                {
                    "module": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "mask_gen": mask_gen.get_state(),
                    "shuffle_gen": shuffle_gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best_val": best_val,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "bad_epochs": bad_epochs,
                    "epoch": epoch,
                    "max_epochs": settings.max_epochs,
                    "stopped_early": stopped_early,
                },
                state_path,
            )
        if stopped_early:
            break
    bar.close()
    module.load_state_dict(best_state)
    frame = pd.DataFrame(history)
    if frame.empty:
        frame = pd.DataFrame(columns=["epoch", "train_loss", "lr", "seconds"])
    frame = frame.replace({None: np.nan})
    return TrainResult(frame, best_epoch, float(best_val), stopped_early)
