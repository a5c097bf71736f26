"""What a training run is told: settings, the result it returns, the device it runs on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from interscale.names import ACCELERATORS

__all__ = ["TrainResult", "TrainSettings", "resolve_device", "warmup_steps"]


@dataclass(frozen=True)
class TrainSettings:
    """Everything the loop needs besides the module and the graphs.

    Attributes
    ----------
    max_epochs, batch_size
        Epochs to run at most and sample graphs per optimisation step.
    lr, weight_decay, warmup_steps
        AdamW settings and the linear warmup (in steps) before the cosine decay.
    loss
        A name of :data:`interscale.names.REGRESSION_LOSSES`.
    pct_mask_nodes
        Fraction of each sample's cells masked per step.
    seed
        Seeds the masks (``seed``), the shuffle (``seed + 1``), validation masks (``seed + 2``)
        and dropout (``seed + rank``).
    early_stopping, patience, min_delta, min_epochs
        Stop after ``patience`` epochs without a relative improvement of ``min_delta`` of the
        monitored loss, never before ``min_epochs``.
    grad_clip
        Clip the gradient norm to this value (``None``: no clipping).
    progress_bar
        Show a progress bar (rank 0 only).
    checkpoint_dir, checkpoint_every, resume
        Where and how often the resumable state is written, and whether to resume from it.
    strategy
        ``"single"`` or ``"ddp"`` (:data:`interscale.names.STRATEGIES`).
    cosine
        Decay the learning rate along a cosine after the warmup (the published
        ``CosineWarmupScheduler``); ``False`` keeps it constant after the warmup.
    precision
        ``"32"`` (float32) or ``"bf16-mixed"`` (:data:`interscale.names.PRECISIONS`): forward
        passes of training and validation under bfloat16 autocast, the loss in float32.
    """

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
    cosine: bool = True
    precision: str = "32"


@dataclass
class TrainResult:
    """What training produced."""

    history: pd.DataFrame
    best_epoch: int
    best_val_loss: float
    stopped_early: bool


def resolve_device(accelerator: str | None) -> torch.device:
    """Map ``auto``/``cpu``/``cuda``/``gpu`` to a torch device, failing clearly without CUDA.

    Raises
    ------
    ValueError
        For a name outside :data:`interscale.names.ACCELERATORS` (or ``"gpu"``), or ``"cuda"``
        on a machine without CUDA.
    """
    accelerator = (accelerator or "auto").lower()
    if accelerator == "gpu":
        accelerator = "cuda"
    if accelerator not in ACCELERATORS:
        raise ValueError(
            f"unknown accelerator {accelerator!r}; choose one of {', '.join(ACCELERATORS)}"
        )
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ValueError("accelerator 'cuda' was requested but CUDA is not available here")
    return torch.device(accelerator)


def warmup_steps(warmup_epochs: int | None, max_epochs: int, n_train: int, batch_size: int) -> int:
    """Warmup in optimisation steps.

    The published ``lr_warmup`` counts epochs. It is capped at half of the run so that a short run
    (fewer epochs than the warmup) still reaches the full learning rate before decaying.
    """
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    epochs = min(int(warmup_epochs or 0), max_epochs // 2)
    return epochs * steps_per_epoch
