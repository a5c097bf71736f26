"""The ``optim`` section: optimiser, schedule, loss, seed, device and early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from interscale.names import (
    ACCELERATORS,
    CLASSIFICATION_LOSSES,
    LR_SCHEDULERS,
    PRECISIONS,
    REGRESSION_LOSSES,
)

from ._aliases import ACCELERATOR_ALIASES, OPTIM_KEY_ALIASES, loss_note
from ._checks import _as_bool, _as_choice, _as_float, _as_int, _as_str, _is_unset, _set
from ._section import _Section

__all__ = ["OptimConfig"]


@dataclass(frozen=True)
class OptimConfig(_Section):
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
        Early stopping never stops before this many epochs (default 40, as published; a run
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

    _PATH: ClassVar[str] = "optim"
    _ALIASES: ClassVar[dict[str, str]] = OPTIM_KEY_ALIASES

    accelerator: str = "auto"
    lr: float = 1e-3
    lr_scheduler: str | None = "CosineWarmupScheduler"
    lr_warmup: int = 20
    lr_max_epochs: int = 100
    weight_decay: float = 1e-4
    loss: str = "GaussianNLL"
    seed: int = 40
    cross_corr: str = "cell"
    n_epochs: int = 100
    early_stopping: bool = True
    patience: int = 5
    min_delta: float = 0.0
    min_epochs: int = 40
    monitor: str = "auto"
    grad_clip: float | None = None
    precision: str = "32"

    def __post_init__(self) -> None:
        p = self._PATH
        acc = self.accelerator
        if isinstance(acc, str):
            acc = ACCELERATOR_ALIASES.get(acc.lower(), acc.lower())
        _set(self, "accelerator", _as_choice(acc, f"{p}.accelerator", ACCELERATORS))
        _set(self, "lr", _as_float(self.lr, f"{p}.lr", low=0, low_open=True))
        sched = self.lr_scheduler
        if _is_unset(sched, empty_is_unset=True) or sched == "none":
            sched = None
        else:
            _as_choice(sched, f"{p}.lr_scheduler", LR_SCHEDULERS)
        _set(self, "lr_scheduler", sched)
        _set(self, "lr_warmup", _as_int(self.lr_warmup, f"{p}.lr_warmup", minimum=0))
        _set(self, "lr_max_epochs", _as_int(self.lr_max_epochs, f"{p}.lr_max_epochs", minimum=1))
        _set(self, "weight_decay", _as_float(self.weight_decay, f"{p}.weight_decay", low=0))
        note = loss_note(self.loss)
        _as_choice(self.loss, f"{p}.loss", REGRESSION_LOSSES + CLASSIFICATION_LOSSES, note=note)
        _set(self, "seed", _as_int(self.seed, f"{p}.seed", minimum=0))
        _as_choice(self.cross_corr, f"{p}.cross_corr", ("cell", "gene"))
        _set(self, "n_epochs", _as_int(self.n_epochs, f"{p}.n_epochs", minimum=1))
        _as_bool(self.early_stopping, f"{p}.early_stopping")
        _set(self, "patience", _as_int(self.patience, f"{p}.patience", minimum=1))
        _set(self, "min_delta", _as_float(self.min_delta, f"{p}.min_delta", low=0))
        _set(self, "min_epochs", _as_int(self.min_epochs, f"{p}.min_epochs", minimum=0))
        _as_str(self.monitor, f"{p}.monitor")
        clip = self.grad_clip
        if not _is_unset(clip):
            clip = _as_float(clip, f"{p}.grad_clip", low=0, low_open=True)
        _set(self, "grad_clip", None if _is_unset(clip) else clip)
        precision = self.precision
        if isinstance(precision, int) and not isinstance(precision, bool):
            precision = str(precision)  # `precision: 32` in YAML
        _set(self, "precision", _as_choice(precision, f"{p}.precision", PRECISIONS))
