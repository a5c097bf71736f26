"""Standardised gene loadings of the linear decoders."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from interscale._anndata import check_not_view
from interscale.evaluation._utils import _column_stats, _embedding, _get_matrix
from interscale.names import Key


def _core_module(model: Any) -> Any:
    """The torch module behind ``model`` (a CombinedModel-like wrapper, DDP, or the module)."""
    import torch

    if isinstance(model, torch.nn.Module) and not isinstance(
        getattr(model, "module", None), torch.nn.Module
    ):
        return model
    inner = getattr(model, "module", None)
    if isinstance(inner, torch.nn.Module):
        # DistributedDataParallel wraps once more.
        deeper = getattr(inner, "module", None)
        return deeper if isinstance(deeper, torch.nn.Module) else inner
    raise TypeError(
        f"gene_loadings: model must be a torch.nn.Module or have a `.module` torch.nn.Module, "
        f"got {type(model).__name__}"
    )


def _decoder(core: Any, head: str) -> Any:
    """The ``head`` ('local'/'global') decoder, or None when the model has no such component."""
    attr = f"{head}_decoder"
    if hasattr(core, attr):
        return getattr(core, attr)
    sub = getattr(core, f"{head}_module", None)  # published layout: local_module.decoder
    if sub is not None and hasattr(sub, "decoder"):
        return sub.decoder
    return None


def _fallback_linear_weight(decoder: Any, head: str) -> Any:
    """Weight of an ``nn.Linear``, of a ``weight`` matrix attribute or of a ``linear`` /
    ``decoder`` ``nn.Linear`` child (the published ``LinearDecoder.decoder``)."""
    import torch

    if isinstance(decoder, torch.nn.Linear):
        return decoder.weight
    w = getattr(decoder, "weight", None)
    if isinstance(w, torch.Tensor) and w.ndim == 2:
        return w
    for child in ("linear", "decoder"):  # "decoder": published LinearDecoder.decoder
        sub = getattr(decoder, child, None)
        if isinstance(sub, torch.nn.Linear):
            return sub.weight
    raise TypeError(
        f"gene_loadings needs a linear decoder; the {head} decoder is {type(decoder).__name__}"
    )


def _linear_weight(decoder: Any, head: str) -> np.ndarray:
    """Decoder weight as a (n_output, n_embed) float64 array; TypeError if not linear."""
    try:
        from interscale.nn import linear_weight  # type: ignore[attr-defined]
    except ImportError:
        linear_weight = None
    w = None
    if linear_weight is not None:
        try:
            w = linear_weight(decoder)
        except TypeError:
            w = None  # e.g. published layouts it does not know; the fallback decides
    if w is None:
        w = _fallback_linear_weight(decoder, head)
    if hasattr(w, "detach"):
        w = w.detach().cpu().double().numpy()
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"gene_loadings: the {head} decoder weight must be 2-D, got {w.shape}")
    return w


def gene_loadings(
    adata: AnnData,
    model: Any,
    layer_key: str,
    local_latent_key: str = Key.obsm.embedding("local"),
    global_latent_key: str = Key.obsm.embedding("global"),
    local_varm_key: str = "_local_std_gene_loadings",
    global_varm_key: str = "_global_std_gene_loadings",
    eps: float = 1e-8,
) -> AnnData:
    """Standardised loadings of each linear decoder, written to ``adata.varm``.

    For each head h in {local, global} with decoder ``x_hat = W z_h + b``::

        S_gk = W_gk * sd(z_h[:, k]) / sd(x_g)

    i.e. the change of gene g, in its own standard deviations, per one-sd change of latent
    dimension k of that head's own embedding. Both sds use ddof=1 (dense and sparse layers
    alike); rows of an embedding that are not all finite are ignored; non-finite entries of
    the layer are ignored per gene.

    Parameters
    ----------
    adata
        AnnData with the embeddings in ``obsm`` and the expression layer.
    model
        A CombinedModel-like object with a ``.module`` torch module, a (DDP-wrapped) module,
        or the module itself. It must have ``local_decoder`` / ``global_decoder`` attributes
        (or the published ``local_module.decoder`` / ``global_module.decoder``); a missing
        or None decoder skips that head.
    layer_key
        Layer the model was trained on (e.g. ``"log1p_norm"``).
    local_latent_key, global_latent_key
        ``obsm`` keys of the local and global embeddings.
    local_varm_key, global_varm_key
        ``varm`` keys the loadings are written to.
    eps
        Genes with sd(x_g) <= eps have no variance to explain: their loadings are set to 0
        (rather than dividing by a tiny number).

    Returns
    -------
    AnnData
        ``adata`` itself, with the ``varm`` entries (n_vars x n_embed, float64) added.

    Raises
    ------
    TypeError
        A decoder is not linear, ``model`` is not a torch module (wrapper), or ``adata`` is a
        view (the loadings written into it would be lost).
    KeyError
        An embedding or the layer is missing.
    ValueError
        The model has neither decoder, shapes disagree, an embedding has fewer than two
        finite rows, or ``eps`` is negative.
    """
    what = "gene_loadings"
    check_not_view(adata, what)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"gene_loadings: eps must be a finite number >= 0, got {eps!r}")
    core = _core_module(model)
    heads = {
        "local": (local_latent_key, local_varm_key),
        "global": (global_latent_key, global_varm_key),
    }
    weights = {}
    for head in heads:
        dec = _decoder(core, head)
        if dec is not None:
            weights[head] = _linear_weight(dec, head)
    if not weights:
        raise ValueError(
            "gene_loadings: the model has neither a local nor a global decoder "
            "(expected attributes local_decoder / global_decoder)"
        )

    x = _get_matrix(adata, layer_key, what=what)
    results = {}
    for head, w in weights.items():
        z_key, _ = heads[head]
        if w.shape[0] != adata.n_vars:
            raise ValueError(
                f"gene_loadings: the {head} decoder outputs {w.shape[0]} genes, "
                f"adata has {adata.n_vars}"
            )
        z = _embedding(adata, z_key, min_rows=2, what=what)
        if z.shape[1] != w.shape[1]:
            raise ValueError(
                f"gene_loadings: the {head} decoder has {w.shape[1]} latent dims, "
                f"adata.obsm[{z_key!r}] has {z.shape[1]}"
            )
        results[head] = (w, z.std(axis=0, ddof=1))

    sd_x = _column_stats(x, ddof=1)["sd"]
    usable = np.isfinite(sd_x) & (sd_x > eps)
    inv_sd_x = np.divide(1.0, sd_x, out=np.zeros_like(sd_x), where=usable)
    # Validate everything first, then write: a failure never leaves adata half-updated.
    for head, (w, sd_z) in results.items():
        adata.varm[heads[head][1]] = w * sd_z[None, :] * inv_sd_x[:, None]
    return adata
