"""The training loop: masked self-supervision, validation, early stopping, resumable checkpoints.

Two strategies share the loop: ``"single"`` (one process) and ``"ddp"`` (one process per device,
``torch.distributed`` + :class:`~torch.nn.parallel.DistributedDataParallel`). Under ``"ddp"``
every rank walks the same global batches (same shuffle and mask generators as one process) and
trains on its share of each batch's graphs, with the loss weighted so that the averaged gradient
is the single-process gradient of the whole batch.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interscale._io import atomic_file
from interscale.graphs import GraphBatch, SampleGraph, iterate_batches
from interscale.graphs._graphs import _batch_groups as _global_batches
from interscale.train._distributed import (
    DistContext,
    all_reduce_tensor,
    barrier,
    broadcast_flags,
    broadcast_object,
    check_strategy,
    setup_distributed,
    teardown_distributed,
)
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
    strategy: str = "single"


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

    def to_vector(self, heads: Sequence[str], n_genes: int) -> torch.Tensor:
        """The sufficient statistics as one float64 vector (zeros where nothing was added)."""
        zeros = torch.zeros(n_genes, dtype=torch.float64)
        parts = [
            torch.tensor([float(self.n)], dtype=torch.float64),
            zeros if self.sum_y is None else self.sum_y,
            zeros if self.sum_y2 is None else self.sum_y2,
        ]
        parts += [self.sum_res.get(head, zeros) for head in heads]
        return torch.cat(parts)

    @classmethod
    def from_vector(cls, vector: torch.Tensor, heads: Sequence[str], n_genes: int):
        """Inverse of :meth:`to_vector` (e.g. after summing the vectors of several ranks)."""
        acc = cls()
        acc.n = int(round(float(vector[0])))
        rest = vector[1:].to(torch.float64).reshape(2 + len(heads), n_genes)
        acc.sum_y, acc.sum_y2 = rest[0].clone(), rest[1].clone()
        acc.sum_res = {head: rest[2 + i].clone() for i, head in enumerate(heads)}
        return acc

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
        mask = draw_mask(batch.ptr, pct_mask_nodes, generator, eligible=batch.core)
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


# ----------------------------------------------------------------------- data-parallel pieces
def _draw_global_masks(
    graphs: Sequence[SampleGraph], pct_mask_nodes: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """One mask per graph, equal to what ``draw_mask`` gives for the collated global batch.

    All ranks draw the whole batch's masks from the same generator, so the masks (and the
    generator's state afterwards) do not depend on the number of ranks.
    """
    sizes = [g.n_cells for g in graphs]
    # the ptr GraphBatch.collate would build, without concatenating the expression
    ptr = torch.as_tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.long)
    # halo cells (core False) are never masked, as in the collated batch's ``core``
    eligible = None
    if any(g.core is not None for g in graphs):
        eligible = torch.cat(
            [
                torch.ones(n, dtype=torch.bool) if g.core is None else g.core
                for g, n in zip(graphs, sizes, strict=True)
            ]
        )
    mask = draw_mask(ptr, pct_mask_nodes, generator, eligible=eligible)
    return list(torch.split(mask, sizes))


def _rank_share(items: Sequence, ctx: DistContext) -> list:
    """Items ``rank, rank + W, ...`` of a global batch (empty when the batch is small)."""
    return list(items[ctx.rank :: ctx.world_size])


def _head_names(module: torch.nn.Module) -> list[str]:
    """Heads the module decodes, in the order :func:`_step_losses` reports them."""
    module = getattr(module, "module", module)  # unwrap DistributedDataParallel
    heads = []
    if getattr(module, "local_decoder", None) is not None:
        heads.append("local")
    if getattr(module, "global_decoder", None) is not None:
        heads.append("global")
    return heads


def _train_epoch_ddp(
    net: torch.nn.Module,
    train_graphs: Sequence[SampleGraph],
    settings: TrainSettings,
    mask_gen: torch.Generator,
    shuffle_gen: torch.Generator,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn,
    ctx: DistContext,
    epoch: int,
) -> tuple[dict[str, float], int]:
    """One epoch on this rank's share of every global batch; returns global loss sums."""
    device = ctx.device
    train_sums: dict[str, float] = {}
    n_masked = 0
    for graphs in _global_batches(
        train_graphs, settings.batch_size, shuffle=True, generator=shuffle_gen
    ):
        masks = _draw_global_masks(graphs, settings.pct_mask_nodes, mask_gen)
        counts = [int(m.sum()) for m in masks]
        n_total = sum(counts)
        if n_total == 0:  # one process gets a NaN loss (mean over no cells) here
            raise FloatingPointError(
                f"training loss became nan at epoch {epoch}: no cell of the batch "
                f"{[g.name for g in graphs]} can be masked"
            )
        share, share_masks = _rank_share(graphs, ctx), _rank_share(masks, ctx)
        k_local = sum(_rank_share(counts, ctx))
        if k_local:
            # DDP averages gradients over ranks: W * (local masked cells / all masked cells)
            # times the local mean makes that average the mean over the whole global batch.
            weight = ctx.world_size * k_local / n_total
        else:
            # A small batch left this rank without graphs (or without masked cells); it still
            # has to join the gradient all-reduce, so it runs a graph of the batch that has
            # masked cells, with weight zero.
            first = next(i for i, c in enumerate(counts) if c)
            share, share_masks, weight = graphs[first : first + 1], masks[first : first + 1], 0.0
        batch = GraphBatch.collate(share).to(device)
        mask = torch.cat(share_masks).to(device)
        optimizer.zero_grad(set_to_none=True)
        total, losses, _, _ = _step_losses(net, batch, mask, loss_fn)
        local_sums = torch.tensor(
            [float(v.detach()) * k_local if k_local else 0.0 for v in losses.values()]
        )
        head_sums = all_reduce_tensor(local_sums, ctx)
        step_loss = float(head_sums.mean()) / n_total
        if not math.isfinite(step_loss):
            raise FloatingPointError(
                f"training loss became {step_loss} at epoch {epoch}; "
                "lower the learning rate or check the input layer for extreme values"
            )
        (total * weight).backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        n_masked += n_total
        train_sums["loss"] = train_sums.get("loss", 0.0) + float(head_sums.mean())
        for head, value in zip(losses, head_sums.tolist(), strict=True):
            train_sums[f"loss_{head}"] = train_sums.get(f"loss_{head}", 0.0) + value
    return train_sums, n_masked


@torch.no_grad()
def _evaluate_masked_ddp(
    module: torch.nn.Module,
    graphs: Sequence[SampleGraph],
    *,
    batch_size: int,
    pct_mask_nodes: float,
    seed: int,
    loss: str,
    ctx: DistContext,
) -> dict[str, float]:
    """:func:`evaluate_masked` with the graphs of each batch shared out over the ranks.

    Masks are drawn for the whole batch on every rank, and the loss sums, cell counts and R^2
    sufficient statistics are summed over ranks, so every rank returns the single-process values.
    """
    was_training = module.training
    module.eval()
    loss_fn = make_loss(loss)
    generator = torch.Generator().manual_seed(seed)
    heads = _head_names(module)
    sums = dict.fromkeys(heads, 0.0)
    n_cells = 0
    acc = _R2Accumulator()
    for batch_graphs in _global_batches(graphs, batch_size):
        masks = _draw_global_masks(batch_graphs, pct_mask_nodes, generator)
        share, share_masks = _rank_share(batch_graphs, ctx), _rank_share(masks, ctx)
        if not share or not any(bool(m.any()) for m in share_masks):
            continue  # nothing masked here: the loss would be a mean over no cells
        batch = GraphBatch.collate(share).to(ctx.device)
        mask = torch.cat(share_masks).to(ctx.device)
        _, losses, preds, target = _step_losses(module, batch, mask, loss_fn)
        k = int(mask.sum())
        n_cells += k
        for head, value in losses.items():
            sums[head] += float(value.detach()) * k
        acc.add(target, preds)
    module.train(was_training)
    n_genes = graphs[0].x.shape[1]
    local = torch.cat(
        [
            torch.tensor([float(n_cells)] + [sums[h] for h in heads], dtype=torch.float64),
            acc.to_vector(heads, n_genes),
        ]
    )
    total = all_reduce_tensor(local, ctx)
    n_cells = int(round(float(total[0])))
    head_sums = total[1 : 1 + len(heads)]
    acc = _R2Accumulator.from_vector(total[1 + len(heads) :], heads, n_genes)
    denom = max(1, n_cells)
    result = {"loss": float(head_sums.mean()) / denom}
    for head, value in zip(heads, head_sums.tolist(), strict=True):
        result[f"loss_{head}"] = value / denom
    for head, value in acc.r2().items():
        result[f"r2_{head}"] = value
    return result


def _load_state(path: Path, ctx: DistContext | None):
    """The saved training state, or None without one; under DDP read by rank 0 and broadcast.

    Broadcasting (rather than every rank reading the file) also works when the nodes do not
    share a file system, and a read error on rank 0 is raised on every rank instead of hanging.
    """
    if ctx is None:
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)
    payload = None
    if ctx.is_main:
        try:
            state = (
                torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
            )
            payload = ("ok", state)
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            payload = ("error", f"{type(exc).__name__}: {exc}")
    status, value = broadcast_object(payload, ctx)
    if status == "error":
        raise ValueError(f"cannot resume: rank 0 failed to read {path}: {value}")
    return value


def _save_state_ddp(state: dict, path: Path, ctx: DistContext) -> None:
    """Rank 0 writes ``state`` (with every rank's torch RNG state); failures stop every rank."""
    rng_states: list = [None] * ctx.world_size
    torch.distributed.all_gather_object(rng_states, torch.get_rng_state())
    error = None
    if ctx.is_main:
        try:
            _atomic_torch_save({**state, "torch_rng_ranks": rng_states}, path)
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
    (ok,) = broadcast_flags([error is None], ctx)
    if error is not None:
        raise error
    if not ok:
        raise OSError(f"rank 0 failed to write the training state {path}")


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
        return _fit(module, train_graphs, val_graphs, settings, device, None)
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
        return _fit(module, train_graphs, val_graphs, settings, ctx.device, ctx)
    finally:
        teardown_distributed(ctx)


def _fit(
    module: torch.nn.Module,
    train_graphs: Sequence[SampleGraph],
    val_graphs: Sequence[SampleGraph],
    settings: TrainSettings,
    device: torch.device,
    ctx: DistContext | None,
) -> TrainResult:
    """The loop of :func:`fit`; ``ctx`` is None for one process."""
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
    # Ranks share the mask and shuffle generators but not dropout: seed + rank (rank 0 = one
    # process).
    torch.manual_seed(settings.seed + (0 if ctx is None else ctx.rank))
    world_size = 1 if ctx is None else ctx.world_size
    is_main = ctx is None or ctx.is_main

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
        state = _load_state(state_path, ctx)
        if state is not None:
            if state.get("max_epochs") != settings.max_epochs:
                raise ValueError(
                    f"cannot resume: the checkpoint in {state_path} was written for "
                    f"max_epochs={state.get('max_epochs')}, this call asks for "
                    f"{settings.max_epochs}"
                )
            if state.get("world_size", 1) != world_size:
                raise ValueError(
                    f"cannot resume: the checkpoint in {state_path} was written by "
                    f"{state.get('world_size', 1)} process(es), this run has {world_size}; "
                    "resume with the same number of processes"
                )
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            mask_gen.set_state(state["mask_gen"])
            shuffle_gen.set_state(state["shuffle_gen"])
            if ctx is None:
                torch.set_rng_state(state["torch_rng"])
            else:  # a one-process state (world size 1) has only rank 0's
                torch.set_rng_state(state.get("torch_rng_ranks", [state["torch_rng"]])[ctx.rank])
            history = state["history"]
            best_val, best_epoch = state["best_val"], state["best_epoch"]
            best_state = state["best_state"]
            bad_epochs = state["bad_epochs"]
            start_epoch = state["epoch"] + 1
            stopped_early = state.get("stopped_early", False)

    net = module
    if ctx is not None:
        # Every parameter takes part in every step (probed over the model variants), so no
        # unused-parameter search is needed.
        net = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )

    bar = tqdm(
        range(start_epoch, settings.max_epochs),
        total=settings.max_epochs,
        initial=start_epoch,
        desc="training",
        unit="epoch",
        disable=not settings.progress_bar or not is_main,
        leave=True,
    )
    for epoch in bar:
        if stopped_early:
            break
        t0 = time.perf_counter()
        module.train()
        if ctx is not None:
            train_sums, n_masked = _train_epoch_ddp(
                net,
                train_graphs,
                settings,
                mask_gen,
                shuffle_gen,
                optimizer,
                scheduler,
                loss_fn,
                ctx,
                epoch,
            )
        else:
            train_sums: dict[str, float] = {}
            n_masked = 0
            for batch in iterate_batches(
                train_graphs, settings.batch_size, shuffle=True, generator=shuffle_gen
            ):
                mask = draw_mask(batch.ptr, settings.pct_mask_nodes, mask_gen, eligible=batch.core)
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
            if ctx is None:
                val = evaluate_masked(
                    module,
                    val_graphs,
                    batch_size=settings.batch_size,
                    pct_mask_nodes=settings.pct_mask_nodes,
                    seed=settings.seed + 2,
                    loss=settings.loss,
                    device=device,
                )
            else:
                val = _evaluate_masked_ddp(
                    module,
                    val_graphs,
                    batch_size=settings.batch_size,
                    pct_mask_nodes=settings.pct_mask_nodes,
                    seed=settings.seed + 2,
                    loss=settings.loss,
                    ctx=ctx,
                )
            row.update({f"val_{k}": v for k, v in val.items()})
            monitor = row["val_loss"]
        else:
            monitor = row["train_loss"]
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0

        # Relative improvement, written so that it also holds for negative losses (GaussianNLL).
        improved = not math.isfinite(best_val) or monitor < best_val - settings.min_delta * abs(
            best_val
        )
        if ctx is not None:
            # the numbers agree on every rank; rank 0's decision makes sure the states do too
            (improved,) = broadcast_flags([improved], ctx)
        if improved:
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
        if ctx is not None:
            (stopped_early,) = broadcast_flags([stopped_early], ctx)
        if state_path is not None and (
            (epoch + 1) % settings.checkpoint_every == 0
            or stopped_early
            or epoch == settings.max_epochs - 1
        ):
            state = {
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
                "world_size": world_size,
            }
            if ctx is None:
                _atomic_torch_save(state, state_path)
            else:
                _save_state_ddp(state, state_path, ctx)
        if stopped_early:
            break
    bar.close()
    if ctx is not None:
        del net  # drops DDP's gradient hooks from the module's parameters
        barrier(ctx)
    module.load_state_dict(best_state)
    frame = pd.DataFrame(history)
    if frame.empty:
        frame = pd.DataFrame(columns=["epoch", "train_loss", "lr", "seconds"])
    frame = frame.replace({None: np.nan})
    return TrainResult(frame, best_epoch, float(best_val), stopped_early)
