"""Training: one loop for one process and for data-parallel processes, losses and masking."""

from interscale.train._distributed import STRATEGIES, check_launch, env_world, resolve_strategy
from interscale.train._epoch import evaluate_masked
from interscale.train._losses import LOSSES, make_loss
from interscale.train._masking import draw_mask, fold_masks
from interscale.train._precision import PRECISIONS, autocast
from interscale.train._settings import TrainResult, TrainSettings, resolve_device, warmup_steps
from interscale.train._trainer import fit

__all__ = [
    "LOSSES",
    "PRECISIONS",
    "STRATEGIES",
    "TrainResult",
    "TrainSettings",
    "autocast",
    "check_launch",
    "draw_mask",
    "env_world",
    "evaluate_masked",
    "fit",
    "fold_masks",
    "make_loss",
    "resolve_device",
    "resolve_strategy",
    "warmup_steps",
]
