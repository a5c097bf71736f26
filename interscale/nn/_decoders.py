"""Decoders from an embedding to the expression of every gene."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from interscale.names import DECODER_TYPES

__all__ = [
    "DECODER_KINDS",
    "LinearDecoder",
    "LinearLSEDecoder",
    "NonLinearDecoder",
    "linear_weight",
    "make_decoder",
]

#: The decoder kinds, :data:`interscale.names.DECODER_TYPES` (this name is kept for imports).
DECODER_KINDS = DECODER_TYPES


class LinearDecoder(nn.Module):
    """Affine decoder ``y = W z + b`` (``W``: ``n_output x n_embed``).

    Parameters
    ----------
    n_embed
        Embedding size.
    n_output
        Number of genes.
    """

    def __init__(self, n_embed: int, n_output: int) -> None:
        super().__init__()
        # attribute name kept from the published model (state-dict key ``decoder.weight``)
        self.decoder = nn.Linear(n_embed, n_output)

    @property
    def weight(self) -> Tensor:
        """The ``(n_output, n_embed)`` weight matrix."""
        return self.decoder.weight

    def forward(self, z: Tensor) -> Tensor:
        """Decode ``z`` ``[N, n_embed]`` to ``[N, n_output]``."""
        return self.decoder(z)


class LinearLSEDecoder(nn.Module):
    """Log-sum-exp decoder ``y_g = log(sum_k exp(z_k W_kg)) + b_g``.

    The weight is stored as ``(n_embed, n_output)`` like the published module; :attr:`weight_t`
    and :func:`linear_weight` give it as ``(n_output, n_embed)``.

    Parameters
    ----------
    n_embed
        Embedding size.
    n_output
        Number of genes.
    """

    def __init__(self, n_embed: int, n_output: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_embed, n_output))
        self.bias = nn.Parameter(torch.empty(n_output))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(n_output)  # torch's fan_in of a (n_embed, n_output) matrix
        nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight_t(self) -> Tensor:
        """The weight as ``(n_output, n_embed)``."""
        return self.weight.t()

    def forward(self, z: Tensor) -> Tensor:
        """Decode ``z`` ``[N, n_embed]`` to ``[N, n_output]``."""
        return torch.logsumexp(z.unsqueeze(2) * self.weight.unsqueeze(0), dim=1) + self.bias


class NonLinearDecoder(nn.Module):
    """MLP decoder: ``[Linear, LayerNorm, ReLU, Dropout]`` per hidden layer, then ``Linear``.

    Parameters
    ----------
    n_embed
        Embedding size.
    n_output
        Number of genes.
    hidden_dims
        Widths of the hidden layers.
    dropout
        Dropout after every hidden layer.
    """

    def __init__(
        self,
        n_embed: int,
        n_output: int,
        hidden_dims: Sequence[int] = (256, 128),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        dims = [n_embed, *hidden_dims]
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(), nn.Dropout(dropout))
            for a, b in pairwise(dims)
        ]
        blocks.append(nn.Linear(dims[-1], n_output))
        self.decoder = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        """Decode ``z`` ``[N, n_embed]`` to ``[N, n_output]``."""
        return self.decoder(z)


# One decoder per name of ``interscale.names.DECODER_TYPES`` (tests/test_names.py checks it).
_DECODERS: dict[str, type[nn.Module]] = {
    "linear": LinearDecoder,
    "nonlinear": NonLinearDecoder,
    "linear-lse": LinearLSEDecoder,
}


def make_decoder(
    kind: str,
    n_embed: int,
    n_output: int,
    hidden_dims: Sequence[int] = (256, 128),
    dropout: float = 0.1,
) -> nn.Module:
    """Build a decoder.

    Parameters
    ----------
    kind
        ``"linear"``, ``"nonlinear"`` or ``"linear-lse"``.
    n_embed
        Embedding size.
    n_output
        Number of genes.
    hidden_dims
        Hidden widths (``nonlinear`` only).
    dropout
        Dropout (``nonlinear`` only).

    Returns
    -------
    torch.nn.Module
        ``forward(z [N, n_embed]) -> [N, n_output]``.

    Raises
    ------
    ValueError
        On an unknown ``kind``, non-positive sizes or a dropout outside [0, 1).
    """
    if kind not in DECODER_TYPES:
        raise ValueError(f"decoder kind must be one of {DECODER_TYPES}, got {kind!r}")
    dims = [("n_embed", n_embed), ("n_output", n_output)]
    dims += [(f"hidden_dims[{i}]", h) for i, h in enumerate(hidden_dims)]
    for name, value in dims:
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    decoder = _DECODERS[kind]
    if decoder is NonLinearDecoder:
        return NonLinearDecoder(n_embed, n_output, tuple(int(h) for h in hidden_dims), dropout)
    return decoder(n_embed, n_output)


def linear_weight(decoder: nn.Module) -> Tensor:
    """Weight matrix ``(n_output, n_embed)`` of a linear(-family) decoder, for gene loadings.

    Parameters
    ----------
    decoder
        A :class:`LinearDecoder` (``W`` of ``y = W z + b``), a :class:`LinearLSEDecoder` (``W^T``
        of ``y_g = logsumexp_k(z_k W_kg) + b_g``; ``W_kg`` is then the slope of gene ``g`` along
        dimension ``k`` where that dimension dominates the sum) or an ``nn.Linear``.

    Returns
    -------
    Tensor
        The weight, ``(n_output, n_embed)`` (a view of the parameter; detach before editing).

    Raises
    ------
    TypeError
        For a nonlinear (MLP) decoder or any other module without a single weight matrix.
    """
    if isinstance(decoder, LinearDecoder):
        return decoder.weight
    if isinstance(decoder, LinearLSEDecoder):
        return decoder.weight_t
    if isinstance(decoder, nn.Linear):
        return decoder.weight
    raise TypeError(
        f"gene loadings need a linear decoder ('linear' or 'linear-lse'); got "
        f"{type(decoder).__name__}, which has no single (n_output, n_embed) weight"
    )
