"""Shared test set-up: no test may reach a network; small organoids, model setup, tiny configs.

The factories are plain functions rather than fixtures, so that module-scoped fixtures,
helpers, the DDP workers of test_distributed (spawned processes) and the subprocess of
test_cuda call them alike: ``from conftest import organoids, setup_model_anndata,
tiny_config``. Each test file passes its own numbers (sizes, seeds, epochs).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from anndata import AnnData

    from interscale.config import Config

#: Radius of the per-sample spatial graph the model tests build on the synthetic organoids.
RADIUS = 200
#: The layer the models of the tests train on.
LAYER = "log1p_norm"

# tiny_config's keywords -> the config paths they set.
_CONFIG_PATHS = {
    "n_epochs": ("optim.n_epochs",),
    "seed": ("optim.seed",),
    "min_epochs": ("optim.min_epochs",),
    "lr_warmup": ("optim.lr_warmup",),
    "loss": ("optim.loss",),
    "batch_size": ("dataset.batch_size",),
    "name": ("dataset.name",),
    "width": (
        "model.local_component.parameters.hidden_dim",
        "model.global_component.parameters.dim_feedforward",
    ),
}


class NetworkBlockedError(RuntimeError):
    """Raised when a test tries to open a network connection."""


@pytest.fixture(autouse=True)
def _block_network(monkeypatch):
    """Make every socket connection attempt fail (AF_UNIX sockets stay usable)."""

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def _guard(self, address, *args, **kwargs):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address, *args, **kwargs)
        raise NetworkBlockedError(f"network access is blocked in tests (tried {address!r})")

    def _guard_ex(self, address, *args, **kwargs):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect_ex(self, address, *args, **kwargs)
        raise NetworkBlockedError(f"network access is blocked in tests (tried {address!r})")

    def _no_create_connection(address, *args, **kwargs):
        raise NetworkBlockedError(f"network access is blocked in tests (tried {address!r})")

    monkeypatch.setattr(socket.socket, "connect", _guard)
    monkeypatch.setattr(socket.socket, "connect_ex", _guard_ex)
    monkeypatch.setattr(socket, "create_connection", _no_create_connection)
    yield


def organoids(
    n_samples: int = 5,
    cells: int | tuple[int, int] = (120, 200),
    seed: int = 0,
    *,
    n_genes: int | None = None,
    prepare: bool = True,
    setup: bool = False,
) -> AnnData:
    """Synthetic organoids, normalised and with a spatial graph, ready for a model.

    Parameters
    ----------
    n_samples, cells, seed
        ``synthetic_organoids``' ``n_samples``, ``cells_per_sample`` and ``seed``.
    n_genes
        Genes of the panel (None: the generator's default).
    prepare
        Normalise the counts into the ``"log1p_norm"`` layer and build the per-sample radius
        graph (radius ``RADIUS``); False returns the raw counts only.
    setup
        Also set the AnnData up for :class:`~interscale.model.CombinedModel`
        (:func:`setup_model_anndata` with its defaults).
    """
    import interscale as isc

    extra = {} if n_genes is None else {"n_genes": n_genes}
    adata = isc.datasets.synthetic_organoids(
        n_samples=n_samples, cells_per_sample=cells, seed=seed, **extra
    )
    if prepare:
        isc.pp.normalize(adata, key_added=LAYER)
        isc.pp.spatial_neighbors(adata, radius=RADIUS, library_key="sample")
    if setup:
        setup_model_anndata(adata)
    return adata


def setup_model_anndata(
    adata: AnnData,
    cls: type | None = None,
    layer_key: str | None = LAYER,
    *,
    sample_keys: Sequence[str] = ("sample",),
    **kwargs: Any,
) -> None:
    """``cls.setup_anndata`` (default ``CombinedModel``) on ``layer_key``, one sample key.

    ``view_registry`` is off; further keyword arguments go to ``setup_anndata``.
    """
    if cls is None:
        from interscale.model import CombinedModel

        cls = CombinedModel
    cls.setup_anndata(
        adata,
        layer_key=layer_key,
        sample_key_list=list(sample_keys),
        view_registry=False,
        **kwargs,
    )


def tiny_config(
    overrides: Mapping[str, Any] | None = None,
    /,
    *,
    n_epochs: int | None = 1,
    seed: int | None = None,
    min_epochs: int | None = 0,
    lr_warmup: int | None = 1,
    loss: str | None = None,
    batch_size: int | None = 2,
    name: str | None = "tiny",
    width: int | None = 16,
) -> Config:
    """A small, fast training config: the default config with these values.

    Each keyword sets its config path (``width`` sets the local encoder's ``hidden_dim`` and
    the global encoder's ``dim_feedforward``); None leaves the library default. The dotted
    ``overrides`` (``{"optim.lr": 1e-3}``) are applied on top, so they win.
    """
    from interscale.config import load_config, with_overrides

    chosen = {
        "n_epochs": n_epochs,
        "seed": seed,
        "min_epochs": min_epochs,
        "lr_warmup": lr_warmup,
        "loss": loss,
        "batch_size": batch_size,
        "name": name,
        "width": width,
    }
    values = {
        path: value
        for keyword, value in chosen.items()
        if value is not None
        for path in _CONFIG_PATHS[keyword]
    }
    values.update(overrides or {})
    return with_overrides(load_config(None), values)
