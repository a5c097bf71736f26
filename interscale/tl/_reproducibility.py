"""Seeds and deterministic kernels."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["set_full_reproducibility"]


def set_full_reproducibility(seed: int = 42) -> None:
    """Seed every generator and switch torch to deterministic algorithms.

    Sets Python's, NumPy's and torch's global seeds, ``torch.use_deterministic_algorithms(True)``,
    ``CUBLAS_WORKSPACE_CONFIG`` (needed by deterministic cuBLAS) and the cuDNN flags. InterScale's
    own random draws (masks, shuffling, folds) use explicit generators seeded from the config, so
    this call matters for user code and third-party kernels.

    On CUDA, deterministic algorithms also decide the attention kernel: ``kernel="auto"`` then
    runs the blocked ``math`` kernel (bit-reproducible) instead of FlexAttention (fast; the
    reproducibility of its fused backward is not established). The reproduction notebooks call
    this function, so on a GPU they time the deterministic path; ``print(model)`` and
    :func:`interscale.nn.attention_kernel` name the kernel that runs.

    Parameters
    ----------
    seed
        The seed, a non-negative integer.

    Raises
    ------
    TypeError, ValueError
        If ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeding the legacy global state on purpose
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=False)
