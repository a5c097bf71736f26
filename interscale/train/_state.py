"""Early stopping, and the resumable training state written after every epoch."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interscale._io import atomic_file
from interscale.train._distributed import DistContext, broadcast_flags, broadcast_object

__all__ = ["STATE_FILE", "EarlyStopping", "load_state", "save_state"]

#: File name of the resumable state inside ``checkpoint_dir``.
STATE_FILE = "train_state.pt"


@dataclass
class EarlyStopping:
    """Tracks the best monitored loss, its weights, and when to stop.

    Attributes
    ----------
    enabled, patience, min_delta, min_epochs
        Stop after ``patience`` epochs without a relative improvement of ``min_delta``, never
        before ``min_epochs`` epochs (nothing stops when ``enabled`` is false).
    best_val, best_epoch, best_state, bad_epochs, stopped
        The running state (saved in and restored from the training state).
    """

    enabled: bool
    patience: int
    min_delta: float
    min_epochs: int
    best_val: float = math.inf
    best_epoch: int = -1
    best_state: dict = field(default_factory=dict)
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, monitor: float, epoch: int, module: torch.nn.Module, ctx: DistContext) -> bool:
        """Record the epoch's monitored loss; True when it is the best so far.

        Rank 0's decisions are broadcast so that every rank keeps the same weights and stops at
        the same epoch.
        """
        # Relative improvement, written so that it also holds for negative losses (GaussianNLL).
        improved = not math.isfinite(self.best_val) or monitor < self.best_val - (
            self.min_delta * abs(self.best_val)
        )
        (improved,) = broadcast_flags([improved], ctx)
        if improved:
            self.best_val, self.best_epoch, self.bad_epochs = monitor, epoch, 0
            self.best_state = copy.deepcopy(module.state_dict())
        else:
            self.bad_epochs += 1
        stop = self.enabled and self.bad_epochs >= self.patience and epoch + 1 >= self.min_epochs
        (self.stopped,) = broadcast_flags([stop], ctx)
        return improved

    def as_state(self) -> dict:
        """The fields the training state stores (published key names)."""
        return {
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped,
        }

    def restore(self, state: dict) -> None:
        """Take the fields back from a training state."""
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.best_state = state["best_state"]
        self.bad_epochs = state["bad_epochs"]
        self.stopped = state.get("stopped_early", False)


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def save_state(state: dict, path: Path, ctx: DistContext) -> None:
    """Rank 0 writes ``state`` atomically (with every rank's torch RNG state under DDP).

    A failure to write stops every rank, not only rank 0.
    """
    if not ctx.distributed:
        _atomic_torch_save(state, path)
        return
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


def load_state(path: Path, ctx: DistContext) -> dict | None:
    """The saved training state, or None without one; under DDP read by rank 0 and broadcast.

    Broadcasting (rather than every rank reading the file) also works when the nodes do not
    share a file system, and a read error on rank 0 is raised on every rank instead of hanging.
    """
    if not ctx.distributed:
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


def check_resumable(state: dict, path: Path, max_epochs: int, world_size: int) -> None:
    """Raise a ``ValueError`` when a saved state cannot continue this run."""
    if state.get("max_epochs") != max_epochs:
        raise ValueError(
            f"cannot resume: the checkpoint in {path} was written for "
            f"max_epochs={state.get('max_epochs')}, this call asks for {max_epochs}"
        )
    if state.get("world_size", 1) != world_size:
        raise ValueError(
            f"cannot resume: the checkpoint in {path} was written by "
            f"{state.get('world_size', 1)} process(es), this run has {world_size}; "
            "resume with the same number of processes"
        )
