"""Helpers for data-parallel training with ``torch.distributed`` (one process per device).

The training loop (:func:`interscale.train.fit`) uses these to join the process group that
``torchrun`` describes through its environment variables, to sum a few numbers over the ranks and
to share rank 0's decisions.  Collectives run on the device the backend needs: CUDA tensors for
``nccl``, CPU tensors for ``gloo``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from interscale.names import STRATEGIES

__all__ = [
    "STRATEGIES",
    "DistContext",
    "all_reduce_tensor",
    "barrier",
    "broadcast_flags",
    "broadcast_object",
    "check_launch",
    "check_strategy",
    "env_world",
    "resolve_strategy",
    "setup_distributed",
    "single_process",
    "teardown_distributed",
]

_LAUNCH_HINT = (
    "launch one process per device with torchrun, e.g. "
    "`torchrun --nproc_per_node 2 --no-python interscale train --config FILE --strategy ddp` "
    "or `torchrun --nproc_per_node 2 your_script.py`, or call "
    "torch.distributed.init_process_group() yourself before training"
)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the process group.

    Attributes
    ----------
    rank, world_size, local_rank
        Global rank, number of processes and rank on this node.
    device
        The device this rank trains on (``cuda:<local_rank>`` on GPUs).
    comm_device
        The device of the tensors handed to collectives (CUDA for ``nccl``, CPU otherwise).
    owns_group
        Whether :func:`setup_distributed` created the process group (and so destroys it).
    distributed
        False for the one process of :func:`single_process`: the collectives then return their
        input without touching ``torch.distributed``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    comm_device: torch.device
    owns_group: bool
    distributed: bool = True

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes files and shows progress."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def env_world() -> tuple[int, int, int] | None:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as set by ``torchrun``, or None outside a launcher.

    Returns
    -------
    The three integers (``LOCAL_RANK`` defaults to ``RANK``), or None when ``RANK`` or
    ``WORLD_SIZE`` is unset.

    Raises
    ------
    ValueError
        If one of the variables is not an integer or the ranks are out of range.
    """
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank is None or world is None:
        return None
    local = _env_int("LOCAL_RANK")
    local = rank if local is None else local
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def check_strategy(strategy: str) -> str:
    """Return ``strategy`` if it is one of :data:`STRATEGIES`.

    Raises
    ------
    ValueError
        Naming the allowed values.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    return strategy


def resolve_strategy(strategy: str | None) -> str:
    """Pick the training strategy; ``None`` or ``"auto"`` means ``"ddp"`` under a launcher.

    Parameters
    ----------
    strategy
        ``"single"``, ``"ddp"``, ``"auto"`` or None. Auto is ``"ddp"`` when a
        ``torch.distributed`` process group is initialised or ``WORLD_SIZE`` > 1 in the
        environment, ``"single"`` otherwise.

    Returns
    -------
    ``"single"`` or ``"ddp"``.

    Raises
    ------
    ValueError
        On any other value.
    """
    if strategy is None or strategy == "auto":
        initialised = dist.is_available() and dist.is_initialized()
        world = _env_int("WORLD_SIZE") or 1
        return "ddp" if initialised or world > 1 else "single"
    return check_strategy(strategy)


def check_launch() -> None:
    """Fail early, with launch instructions, where ``strategy="ddp"`` could not start.

    Raises
    ------
    ValueError
        Without an initialised process group and without the ``torchrun`` environment.
    """
    if not dist.is_available():
        raise ValueError("strategy='ddp' needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized() and env_world() is None:
        raise ValueError(
            "strategy='ddp' needs a torch.distributed process group, but none is initialised "
            f"and RANK/WORLD_SIZE are not set: {_LAUNCH_HINT}"
        )


def setup_distributed(device: torch.device) -> DistContext:
    """Join (or reuse) the process group and pick this rank's device.

    Parameters
    ----------
    device
        The requested device; a CUDA device becomes ``cuda:<LOCAL_RANK>``.

    Returns
    -------
    The rank's context. The group is created with backend ``nccl`` on CUDA, ``gloo`` on CPU,
    from the ``torchrun`` environment (``env://``), unless one is already initialised.

    Raises
    ------
    ValueError
        Without an initialised group and without the ``torchrun`` environment (the message says
        how to launch), or when the local rank has no GPU.
    """
    check_launch()
    owns = not dist.is_initialized()
    env = env_world()
    if owns:
        rank, world, local_rank = env
    else:
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = env[2] if env is not None else rank
    if device.type == "cuda":
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise ValueError(
                f"local rank {local_rank} has no GPU: this node has {n_gpus}; start at most "
                f"{n_gpus} processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    backend = str(dist.get_backend())
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("the process group uses nccl, which needs CUDA, but training runs on CPU")
    comm_device = device if backend == "nccl" else torch.device("cpu")
    return DistContext(rank, world, local_rank, device, comm_device, owns)


def single_process(device: torch.device) -> DistContext:
    """The context of one process training alone: rank 0 of a world of one, no process group."""
    return DistContext(0, 1, 0, device, torch.device("cpu"), owns_group=False, distributed=False)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_tensor(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``values`` over the ranks; returns a new float64 CPU tensor of the same shape."""
    buffer = values.detach().to(device=ctx.comm_device, dtype=torch.float64).clone()
    if ctx.distributed:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.cpu()


def broadcast_flags(flags: Sequence[bool], ctx: DistContext) -> tuple[bool, ...]:
    """Rank 0's booleans, on every rank (decisions such as early stopping must agree)."""
    if not ctx.distributed:
        return tuple(bool(f) for f in flags)
    buffer = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64, device=ctx.comm_device)
    dist.broadcast(buffer, src=0)
    return tuple(bool(v) for v in buffer.cpu().tolist())


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's picklable object, on every rank (other ranks' ``obj`` is ignored)."""
    if not ctx.distributed:
        return obj
    holder = [obj if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0, device=ctx.comm_device)
    return holder[0]


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here."""
    if not ctx.distributed:
        return
    if ctx.comm_device.type == "cuda":
        dist.barrier(device_ids=[ctx.comm_device.index])
    else:
        dist.barrier()
