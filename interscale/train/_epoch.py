"""One training epoch and one masked evaluation, written once for any number of processes.

A single process is the one-rank case of data-parallel training: every rank walks the same global
batches (same shuffle and mask generators), takes its share of each batch's graphs, and sums its
loss and R^2 statistics with the other ranks (a no-op for one process). The loss of a rank is
weighted so that the averaged gradient is the gradient of the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from interscale._r2 import R2Accumulator
from interscale.graphs import GraphBatch, SampleGraph, batch_groups
from interscale.train._distributed import DistContext, all_reduce_tensor, single_process
from interscale.train._losses import make_loss
from interscale.train._masking import draw_mask
from interscale.train._precision import autocast, to_float32
from interscale.train._settings import TrainSettings

__all__ = ["batch_masks", "evaluate_masked", "train_epoch"]


def _step_losses(module, batch: GraphBatch, mask: torch.Tensor, loss_fn, precision: str = "32"):
    """Forward one batch with ``mask``; the mean loss over heads, each head's, preds, target.

    The forward pass runs in the autocast context of ``precision``; the predictions are cast
    to float32 (a no-op under ``"32"``) and the loss is computed outside the context.
    """
    with autocast(precision, batch.x.device):
        out = module(batch.x, batch.edge_index, batch.ptr, mask=mask, features=batch.features)
    target = batch.x[mask]
    losses, preds = {}, {}
    if out.y_local is not None:
        preds["local"] = to_float32(out.y_local[mask])
        losses["local"] = loss_fn(preds["local"], target)
    if out.y_global is not None:
        preds["global"] = to_float32(out.y_global[mask])
        losses["global"] = loss_fn(preds["global"], target)
    total = sum(losses.values()) / len(losses)
    return total, losses, preds, target


def batch_masks(
    graphs: Sequence[SampleGraph], pct_mask_nodes: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """One mask per graph, equal to what ``draw_mask`` gives for the collated batch.

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
    """Items ``rank, rank + W, ...`` of a global batch (all of them for one process)."""
    return list(items[ctx.rank :: ctx.world_size])


def _train_step(net, graphs, masks, counts, optimizer, scheduler, loss_fn, settings, ctx, epoch):
    """One optimisation step on this rank's share of a global batch; returns the summed losses."""
    n_total = sum(counts)
    share, share_masks = _rank_share(graphs, ctx), _rank_share(masks, ctx)
    k_local = sum(_rank_share(counts, ctx))
    if k_local:
        # DDP averages gradients over ranks: W * (local masked cells / all masked cells) times
        # the local mean makes that average the mean over the whole global batch (1 for one
        # process, which then backpropagates the loss itself).
        weight = ctx.world_size * k_local / n_total
    else:
        # A small batch left this rank without graphs (or without masked cells); it still has
        # to join the gradient all-reduce, so it runs a graph of the batch that has masked cells,
        # with weight zero.
        first = next(i for i, c in enumerate(counts) if c)
        share, share_masks, weight = graphs[first : first + 1], masks[first : first + 1], 0.0
    batch = GraphBatch.collate(share).to(ctx.device)
    mask = torch.cat(share_masks).to(ctx.device)
    optimizer.zero_grad(set_to_none=True)
    total, losses, _, _ = _step_losses(net, batch, mask, loss_fn, settings.precision)
    parts = [total, *losses.values()]
    local_sums = [float(v.detach()) * k_local if k_local else 0.0 for v in parts]
    sums = all_reduce_tensor(torch.tensor(local_sums, dtype=torch.float64), ctx)
    if not math.isfinite(float(sums[0])):
        raise FloatingPointError(
            f"training loss became {float(sums[0]) / n_total} at epoch {epoch}; "
            "lower the learning rate or check the input layer for extreme values"
        )
    (total if weight == 1.0 else total * weight).backward()
    if settings.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
    optimizer.step()
    scheduler.step()
    return ["loss", *(f"loss_{h}" for h in losses)], sums


def train_epoch(
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
) -> dict[str, float]:
    """One pass over the shuffled training graphs; the mean losses over all masked cells.

    Raises
    ------
    FloatingPointError
        If a batch has no cell that can be masked or the loss becomes NaN / infinite.
    """
    sums: dict[str, float] = {}
    n_masked = 0
    for graphs in batch_groups(
        train_graphs, settings.batch_size, shuffle=True, generator=shuffle_gen
    ):
        masks = batch_masks(graphs, settings.pct_mask_nodes, mask_gen)
        counts = [int(m.sum()) for m in masks]
        if sum(counts) == 0:
            raise FloatingPointError(
                f"training loss became nan at epoch {epoch}: no cell of the batch "
                f"{[g.name for g in graphs]} can be masked"
            )
        names, step_sums = _train_step(
            net, graphs, masks, counts, optimizer, scheduler, loss_fn, settings, ctx, epoch
        )
        n_masked += sum(counts)
        for name, value in zip(names, step_sums.tolist(), strict=True):
            sums[name] = sums.get(name, 0.0) + value
    return {f"train_{k}": v / max(1, n_masked) for k, v in sums.items()}


@torch.no_grad()
def evaluate_masked(
    module: torch.nn.Module,
    graphs: Sequence[SampleGraph],
    *,
    batch_size: int,
    pct_mask_nodes: float,
    seed: int,
    loss: str,
    device: torch.device | None = None,
    ctx: DistContext | None = None,
    precision: str = "32",
) -> dict[str, float]:
    """Loss and R^2 per head on freshly masked cells of ``graphs`` (eval mode, fixed seed).

    The same seed gives the same masks, so values are comparable across epochs. Under
    data-parallel training (``ctx`` of several ranks) each rank evaluates its share of every
    batch and all ranks return the numbers of the whole set.

    Parameters
    ----------
    module
        The (unwrapped) module.
    graphs
        Graphs to evaluate.
    batch_size, pct_mask_nodes, seed, loss
        Batching, masking fraction, mask seed and loss name.
    device
        Where to run (one process); ignored when ``ctx`` is given.
    ctx
        The rank's context (default: one process on ``device``).
    precision
        ``"32"`` or ``"bf16-mixed"`` (forward passes under bfloat16 autocast, loss and
        statistics in float32).
    """
    if ctx is None:
        ctx = single_process(device if device is not None else torch.device("cpu"))
    n_genes = graphs[0].n_genes  # not .x: a deferred graph would densify to tell
    was_training = module.training
    module.eval()
    loss_fn = make_loss(loss)
    generator = torch.Generator().manual_seed(seed)
    # a stand-in module without named heads (one that only has a loss) reports only the loss
    heads = tuple(getattr(module, "heads", ()))
    sums = torch.zeros(2 + len(heads), dtype=torch.float64)  # cells, loss, loss per head
    # every entry counts: a non-finite prediction shows as a NaN R^2, never passed over
    acc = R2Accumulator(n_genes, len(heads), skip_nonfinite=False)
    for batch_graphs in batch_groups(graphs, batch_size):
        masks = batch_masks(batch_graphs, pct_mask_nodes, generator)
        share, share_masks = _rank_share(batch_graphs, ctx), _rank_share(masks, ctx)
        if not share or not any(bool(m.any()) for m in share_masks):
            continue  # nothing masked here: the loss would be a mean over no cells
        batch = GraphBatch.collate(share).to(ctx.device)
        mask = torch.cat(share_masks).to(ctx.device)
        total, losses, preds, target = _step_losses(module, batch, mask, loss_fn, precision)
        k = int(mask.sum())
        step = [float(k), float(total.detach()) * k]
        step += [float(losses[h].detach()) * k for h in heads]
        sums += torch.tensor(step, dtype=torch.float64)
        acc.add(_numpy(target), [_numpy(preds[h]) for h in heads])
    module.train(was_training)
    reduced, acc = _all_reduce_with_r2(sums, acc, ctx)
    n_cells = max(1, int(round(float(reduced[0]))))
    result = {"loss": float(reduced[1]) / n_cells}
    for i, head in enumerate(heads):
        result[f"loss_{head}"] = float(reduced[2 + i]) / n_cells
    for head, value in zip(heads, acc.mean_r2(), strict=True):
        result[f"r2_{head}"] = value
    return result


def _numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().cpu().numpy()


def _all_reduce_with_r2(
    sums: torch.Tensor, acc: R2Accumulator, ctx: DistContext
) -> tuple[torch.Tensor, R2Accumulator]:
    """``sums`` and the R^2 statistics summed over the ranks (unchanged for one process).

    Sums add up only about one centre, and each rank's is a cell of its own: the ranks first
    agree on the mean of their centres (a value of each gene, so the sums keep their digits and
    a gene constant over all ranks still sums to zero), then add their sums about it.
    """
    has = 0.0 if acc.shift is None else 1.0
    own = np.zeros(acc.n_genes) if acc.shift is None else acc.shift
    centres = all_reduce_tensor(torch.from_numpy(np.concatenate([[has], has * own])), ctx)
    shift = (centres[1:] / max(1.0, float(centres[0]))).numpy()
    stats = torch.from_numpy(acc.centred_at(shift).to_vector())
    reduced = all_reduce_tensor(torch.cat([sums, stats]), ctx)
    head = len(sums)
    return reduced[:head], R2Accumulator.from_vector(
        reduced[head:].numpy(), shift, skip_nonfinite=acc.skip_nonfinite
    )
