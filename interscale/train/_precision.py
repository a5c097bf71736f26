"""Mixed precision: the autocast context of a precision name, and float32 predictions.

Under ``"bf16-mixed"`` the forward passes run in ``torch.autocast(device_type, torch.bfloat16)``:
linear layers and matrix products run in bfloat16, and the predictions are cast back to float32
before the loss, so the loss, its reduction and everything stored stay float32. ``"32"`` enters
no context at all, so float32 runs are bit-identical to runs without this module.

What autocast does to the attention: on CPU, ``softmax``, ``logsumexp`` and ``exp`` are not on
autocast's float32 list (torch 2.13), so they would run in bfloat16. The blocked attention of
:mod:`interscale.nn._attention` therefore leaves autocast for its softmax: it casts bfloat16
queries, keys and values to float32, keeps the row maximum, the log-sum-exp and the
accumulation in float32 (as its kernels need), and casts the output back to the input dtype.
"""

from __future__ import annotations

import contextlib

import torch

from interscale.names import PRECISIONS

__all__ = ["PRECISIONS", "autocast", "check_precision", "to_float32"]


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`interscale.names.PRECISIONS`.

    Raises
    ------
    ValueError
        For any other value.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context that forward passes run in under ``precision`` on ``device``.

    Parameters
    ----------
    precision
        ``"32"`` (no context: plain float32) or ``"bf16-mixed"`` (bfloat16 autocast).
    device
        The device of the module (its type selects the autocast backend).

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast(device.type, dtype=torch.bfloat16)`` or a null context.
    """
    if check_precision(precision) == "32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def to_float32(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor`` as float32; the tensor itself when it already is (float32 runs untouched)."""
    if tensor is None or tensor.dtype == torch.float32:
        return tensor
    return tensor.float()
