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

from interscale.graphs import GraphBatch, SampleGraph, batch_groups
from interscale.train._distributed import DistContext, all_reduce_tensor, single_process
from interscale.train._losses import make_loss
from interscale.train._masking import draw_mask
from interscale.train._precision import autocast, to_float32
from interscale.train._settings import TrainSettings

__all__ = ["R2Accumulator", "batch_masks", "evaluate_masked", "head_names", "train_epoch"]


class R2Accumulator:
    """Per-gene sums to compute R^2 over all masked cells of an epoch without storing them."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_y = self.sum_y2 = None
        self.sum_res = {}

    def add(self, target: torch.Tensor, preds: dict[str, torch.Tensor]) -> None:
        """Add the masked cells of one step (``preds``: head -> predictions of ``target``)."""
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
        """Mean over genes (with variance) of each head's R^2."""
        if self.n < 2:
            return {head: float("nan") for head in self.sum_res}
        ss_tot = self.sum_y2 - self.sum_y**2 / self.n
        out = {}
        for head, ss_res in self.sum_res.items():
            valid = ss_tot > 1e-12
            values = 1.0 - ss_res[valid] / ss_tot[valid]
            out[head] = float(values.mean()) if valid.any() else float("nan")
        return out


def head_names(module: torch.nn.Module) -> list[str]:
    """Heads the module decodes, in the order :func:`_step_losses` reports them."""
    module = getattr(module, "module", module)  # unwrap DistributedDataParallel
    heads = []
    if getattr(module, "local_decoder", None) is not None:
        heads.append("local")
    if getattr(module, "global_decoder", None) is not None:
        heads.append("global")
    return heads


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
    was_training = module.training
    module.eval()
    loss_fn = make_loss(loss)
    generator = torch.Generator().manual_seed(seed)
    heads = head_names(module)
    sums = torch.zeros(2 + len(heads), dtype=torch.float64)  # cells, loss, loss per head
    acc = R2Accumulator()
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
        acc.add(target, preds)
    module.train(was_training)
    n_genes = graphs[0].n_genes  # not .x: a deferred graph would densify to tell
    reduced = all_reduce_tensor(torch.cat([sums, acc.to_vector(heads, n_genes)]), ctx)
    n_cells = max(1, int(round(float(reduced[0]))))
    result = {"loss": float(reduced[1]) / n_cells}
    for i, head in enumerate(heads):
        result[f"loss_{head}"] = float(reduced[2 + i]) / n_cells
    acc = R2Accumulator.from_vector(reduced[2 + len(heads) :], heads, n_genes)
    for head, value in acc.r2().items():
        result[f"r2_{head}"] = value
    return result
