"""Local component: graph neural network encoders over the spatial graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, GINConv, MessagePassing

from interscale.names import LOCAL_COMPONENTS

__all__ = ["GCNEncoder", "GINEncoder", "make_local_encoder"]


def _check_sizes(n_input: int, n_embed: int, hidden_dim: int, num_layers: int, dropout: float):
    for name, value in [
        ("n_input", n_input),
        ("n_embed", n_embed),
        ("hidden_dim", hidden_dim),
        ("num_layers", num_layers),
    ]:
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _check_inputs(x: Tensor, edge_index: Tensor, n_input: int) -> None:
    if x.dim() != 2 or x.shape[1] != n_input:
        raise ValueError(f"x must have shape [N, {n_input}] (n_input), got {tuple(x.shape)}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, M], got {tuple(edge_index.shape)}")
    if edge_index.dtype != torch.long:
        raise TypeError(f"edge_index must be a LongTensor, got dtype {edge_index.dtype}")


class _ResidualGNN(nn.Module):
    """Shared structure: LayerNorm'd linear skip path + message-passing main path, summed."""

    def __init__(
        self, n_input: int, n_embed: int, hidden_dim: int, num_layers: int, dropout: float
    ) -> None:
        super().__init__()
        _check_sizes(n_input, n_embed, hidden_dim, num_layers, dropout)
        self.n_input = n_input
        self.n_embed = n_embed
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.dropout = dropout
        self.input_proj = nn.Linear(n_input, n_embed)
        self.input_norm = nn.LayerNorm(n_embed)
        layers: list[nn.Module] = []
        in_dim = n_input
        for _ in range(num_layers - 1):
            layers += [
                self._conv(in_dim, hidden_dim),
                nn.LayerNorm(hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
            ]
            in_dim = hidden_dim
        layers += [self._conv(in_dim, n_embed), nn.LayerNorm(n_embed, elementwise_affine=False)]
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(n_embed, elementwise_affine=False)

    def _conv(self, in_dim: int, out_dim: int) -> MessagePassing:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Embed every cell from its expression and its spatial neighbourhood.

        Parameters
        ----------
        x
            ``[N, n_input]`` expression of the cells of a batch.
        edge_index
            ``[2, M]`` spatial edges (PyG convention, global indices of the batch).

        Returns
        -------
        Tensor
            ``[N, n_embed]`` local embeddings.

        Raises
        ------
        ValueError
            If ``x`` or ``edge_index`` has the wrong shape.
        TypeError
            If ``edge_index`` is not a LongTensor.
        """
        _check_inputs(x, edge_index, self.n_input)
        skip = self.input_norm(self.input_proj(x))
        for layer in self.layers:
            x = layer(x, edge_index) if isinstance(layer, MessagePassing) else layer(x)
        return self.final_norm(x + skip)


class GCNEncoder(_ResidualGNN):
    """GCN local encoder.

    Skip path ``Linear(G -> E) + LayerNorm``; main path ``(num_layers - 1) x [GCNConv(-> hidden),
    LayerNorm, GELU, Dropout]`` then ``GCNConv(-> E)`` and a LayerNorm without affine parameters;
    output ``LayerNorm(no affine)(main + skip)``.  GCNConv keeps its default symmetric
    normalisation with added self loops.

    Parameters
    ----------
    n_input
        Number of genes ``G``.
    n_embed
        Embedding size ``E``.
    hidden_dim
        Width of the hidden GCN layers.
    num_layers
        Number of GCN layers (>= 1).
    dropout
        Dropout after each hidden layer.

    Raises
    ------
    ValueError
        On non-positive sizes or a dropout outside [0, 1).
    """

    def __init__(
        self,
        n_input: int,
        n_embed: int = 16,
        hidden_dim: int = 256,
        num_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(n_input, n_embed, hidden_dim, num_layers, dropout)

    def _conv(self, in_dim: int, out_dim: int) -> MessagePassing:
        return GCNConv(in_channels=in_dim, out_channels=out_dim)


class GINEncoder(_ResidualGNN):
    """GIN local encoder with the same residual structure as :class:`GCNEncoder`.

    Every ``GCNConv`` of the GCN encoder is replaced by ``GINConv`` (learnable ``eps``) whose
    network is ``Linear(in -> hidden), GELU, Linear(hidden -> out)``.  (The published GIN used
    BatchNorm inside the MLPs and no skip path; BatchNorm makes a cell's embedding depend on the
    rest of the batch, so this encoder keeps the GCN encoder's LayerNorm structure instead.)

    Parameters
    ----------
    n_input
        Number of genes ``G``.
    n_embed
        Embedding size ``E``.
    hidden_dim
        Width of the hidden layers and of the GIN MLPs.
    num_layers
        Number of GIN layers (>= 1).
    dropout
        Dropout after each hidden layer.

    Raises
    ------
    ValueError
        On non-positive sizes or a dropout outside [0, 1).
    """

    def __init__(
        self,
        n_input: int,
        n_embed: int = 16,
        hidden_dim: int = 256,
        num_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(n_input, n_embed, hidden_dim, num_layers, dropout)

    def _conv(self, in_dim: int, out_dim: int) -> MessagePassing:
        mlp = nn.Sequential(
            nn.Linear(in_dim, self.hidden_dim), nn.GELU(), nn.Linear(self.hidden_dim, out_dim)
        )
        return GINConv(nn=mlp, train_eps=True)


# One encoder per name of ``interscale.names.LOCAL_COMPONENTS`` (tests/test_names.py checks it).
_LOCAL_ENCODERS: dict[str, type[_ResidualGNN]] = {"GCN": GCNEncoder, "GIN": GINEncoder}


def make_local_encoder(
    name: str,
    n_input: int,
    n_embed: int = 16,
    hidden_dim: int = 256,
    num_layers: int = 2,
    dropout: float = 0.1,
) -> nn.Module:
    """Build a local encoder by name.

    Parameters
    ----------
    name
        ``"GCN"`` or ``"GIN"``.
    n_input, n_embed, hidden_dim, num_layers, dropout
        See :class:`GCNEncoder`.

    Returns
    -------
    torch.nn.Module
        The encoder; ``forward(x, edge_index) -> [N, n_embed]``.

    Raises
    ------
    ValueError
        If ``name`` is not a known encoder.
    """
    if name not in LOCAL_COMPONENTS:
        raise ValueError(f"local encoder must be one of {LOCAL_COMPONENTS}, got {name!r}")
    return _LOCAL_ENCODERS[name](n_input, n_embed, hidden_dim, num_layers, dropout)
