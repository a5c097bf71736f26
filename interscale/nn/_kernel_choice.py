"""Which attention kernel runs: the choice of ``kernel="auto"`` (and of the others) made visible."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from interscale.names import ATTENTION_KERNELS, ATTENTION_SCOPES

__all__ = ["attention_kernel", "describe_attention"]


def attention_kernel(
    kernel: str = "auto",
    device: str | torch.device = "cpu",
    scope: str = "full",
    deterministic: bool | None = None,
) -> str:
    """Name the attention kernel that the global encoder runs for these settings.

    ``full`` and ``long_range``: on CUDA ``"auto"`` runs FlexAttention (``"flex"``) unless
    deterministic algorithms are on; then, as under
    :func:`interscale.tl.set_full_reproducibility` (which the reproduction notebooks call), it
    runs the blocked ``"math"`` kernel, whose results are bit-reproducible (that of the fused
    FlexAttention backward is not established).  On the CPU ``"auto"`` runs InterScale's C kernel
    (``"cpu"``, built on first use: this call may build it), else the fused flash kernel
    (``"flash"``), else ``"math"``.  bfloat16 / float16 inputs take the float32 choice (the blocked
    kernels compute in float32).  ``neighbourhood`` always runs the edge softmax (``"edge"``).

    Parameters
    ----------
    kernel
        The encoder's ``kernel`` option (``"auto"``, ``"flex"``, ``"cpu"``, ``"flash"``,
        ``"math"``).
    device
        Device of the attention inputs.
    scope
        Attention scope (``"full"``, ``"neighbourhood"``, ``"long_range"``).
    deterministic
        Whether deterministic algorithms are on; None reads
        ``torch.are_deterministic_algorithms_enabled()``.

    Returns
    -------
    str
        ``"flex"``, ``"cpu"``, ``"flash"``, ``"math"`` or ``"edge"``.

    Raises
    ------
    ValueError
        On an unknown kernel or scope.
    """
    from ._attention import flash_kernel_available
    from ._cpu_kernel import cpu_kernel_available
    from ._flex import resolve_kernel

    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"kernel must be one of {ATTENTION_KERNELS}, got {kernel!r}")
    if scope not in ATTENTION_SCOPES:
        raise ValueError(f"scope must be one of {ATTENTION_SCOPES}, got {scope!r}")
    if scope == "neighbourhood":
        return "edge"
    probe = SimpleNamespace(device=torch.device(device), dtype=torch.float32)
    chosen = resolve_kernel(kernel, probe, deterministic)
    if chosen != "auto":
        return chosen
    if cpu_kernel_available(probe):
        return "cpu"
    return "flash" if flash_kernel_available(probe) else "math"


def describe_attention(cfg: Any, device: str | torch.device) -> str:
    """The model summary's attention line: scope and the kernel that runs it on ``device``.

    Parameters
    ----------
    cfg
        The model's :class:`interscale.config.Config`.
    device
        Device of the model's parameters.

    Returns
    -------
    str
        For example ``"attention scope: full, kernel: cpu"``.
    """
    gp = cfg.model.global_component.parameters
    kernel = attention_kernel(gp.kernel, device, gp.attention)
    return f"attention scope: {gp.attention}, kernel: {kernel}"
