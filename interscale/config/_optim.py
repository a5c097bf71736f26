"""The ``optim`` section: optimiser, schedule, loss, seed, device and early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interscale.names import (
    ACCELERATORS,
    CLASSIFICATION_LOSSES,
    LR_SCHEDULERS,
    PRECISIONS,
    REGRESSION_LOSSES,
)

from ._aliases import ACCELERATOR_ALIASES, OPTIM_KEY_ALIASES, UNSUPPORTED_LOSSES
from ._checks import (
    _as_bool,
    _as_choice,
    _as_str,
    _choice,
    _float,
    _int,
    _is_unset,
    _optional,
    _Section,
    _value,
)

__all__ = ["OptimConfig"]


def _accelerator(value: Any, path: str) -> str:
    if isinstance(value, str):
        value = ACCELERATOR_ALIASES.get(value.lower(), value.lower())
    return _as_choice(value, path, ACCELERATORS)


def _scheduler(value: Any, path: str) -> str | None:
    if _is_unset(value, empty_is_unset=True) or value == "none":
        return None
    return _as_choice(value, path, LR_SCHEDULERS)


def _precision(value: Any, path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `precision: 32` in YAML
    return _as_choice(value, path, PRECISIONS)


@dataclass(frozen=True)
class OptimConfig(_Section, path="optim", aliases=OPTIM_KEY_ALIASES):
    """``optim``: optimiser (AdamW), schedule, loss, seed, device and early stopping.

    Attributes
    ----------
    accelerator
        ``"auto"`` (default), ``"cpu"`` or ``"cuda"``; ``"gpu"`` is stored as ``"cuda"``.
    lr
        Peak learning rate, > 0 (default 1e-3).
    lr_scheduler
        ``"CosineWarmupScheduler"`` (default) or ``None`` (constant after the warm-up).
        ``"ReduceLROnPlateau"`` loads (published configs) but ``train()`` refuses it.
    lr_warmup
        Length of the linear warm-up, >= 0 (default 20). Published semantics: epochs (the
        published scheduler was stepped once per epoch).
    lr_max_epochs
        Compatibility only (default 100); the published trainer used ``n_epochs`` as the cosine
        period instead.
    weight_decay
        AdamW weight decay, >= 0 (default 1e-4). Published name: ``wd`` (accepted as an alias).
    loss
        ``"GaussianNLL"`` (default), ``"MSELoss"`` or ``"SmoothL1"`` for regression;
        ``"CrossEntropy"`` or ``"WeightedCE"`` for classification.
    seed
        Random seed, >= 0 (default 40).
    cross_corr
        Compatibility only (``"cell"`` (default) or ``"gene"``).
    n_epochs
        Maximum number of epochs, >= 1 (default 100).
    early_stopping
        Stop when the validation loss stops improving (default ``True``).
    patience
        Epochs without improvement before stopping, >= 1 (default 5).
    min_delta
        Relative improvement of the validation loss that counts as an improvement: a new loss
        must be below ``best * (1 - min_delta)``; >= 0 (default 0.0).
    min_epochs
        Early stopping never stops before this many epochs (default 40; a run
        with fewer ``n_epochs`` simply runs them all).
    monitor
        Compatibility only (default ``"auto"``); InterScale monitors the validation loss.
    grad_clip
        Maximum gradient norm, > 0, or ``None`` for no clipping (default).
    precision
        ``"32"`` (default: float32 everywhere, bit-identical to earlier versions) or
        ``"bf16-mixed"``: the forward passes of training, validation and inference run under
        ``torch.autocast`` in bfloat16 while the loss is computed in float32 and outputs are
        stored as float32. A YAML integer ``32`` is accepted as ``"32"``.
    """

    accelerator: str = _value("auto", _accelerator)
    lr: float = _value(1e-3, _float(low=0, low_open=True))
    lr_scheduler: str | None = _value("CosineWarmupScheduler", _scheduler)
    lr_warmup: int = _value(20, _int(minimum=0))
    lr_max_epochs: int = _value(100, _int(minimum=1))
    weight_decay: float = _value(1e-4, _float(low=0))
    loss: str = _value(
        "GaussianNLL", _choice(REGRESSION_LOSSES + CLASSIFICATION_LOSSES, UNSUPPORTED_LOSSES)
    )
    seed: int = _value(40, _int(minimum=0))
    cross_corr: str = _value("cell", _choice(("cell", "gene")))
    n_epochs: int = _value(100, _int(minimum=1))
    early_stopping: bool = _value(True, _as_bool)
    patience: int = _value(5, _int(minimum=1))
    min_delta: float = _value(0.0, _float(low=0))
    min_epochs: int = _value(40, _int(minimum=0))
    monitor: str = _value("auto", _as_str)
    grad_clip: float | None = _value(None, _optional(_float(low=0, low_open=True)))
    precision: str = _value("32", _precision)
