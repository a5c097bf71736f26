"""The torch module behind the user-facing model classes."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

from interscale.names import HEADS
from interscale.nn import GlobalEncoder, LinearPart, make_decoder, make_local_encoder

if TYPE_CHECKING:
    from interscale.config import ModelConfig

__all__ = ["InterScaleModule", "ModuleOutput", "init_decoder_bias", "module_from_config"]


class ModuleOutput(NamedTuple):
    """What one forward pass returns (``None`` for an absent component)."""

    local_emb: torch.Tensor | None
    global_emb: torch.Tensor | None
    y_local: torch.Tensor | None
    y_global: torch.Tensor | None
    attention: object | None = None
    cls_attention: torch.Tensor | None = None


class InterScaleModule(nn.Module):
    """Local GNN and/or global Transformer with one decoder per component.

    Parameters
    ----------
    n_genes
        Number of genes (input and output width).
    n_embed
        Width of both embeddings.
    local_component
        ``"GCN"``, ``"GIN"`` or ``None`` for a global-only model.
    global_component
        Whether a global Transformer follows.
    local_kwargs
        ``hidden_dim``, ``num_layers``, ``dropout`` of the local encoder.
    global_kwargs
        Keyword arguments of :class:`interscale.nn.GlobalEncoder`.
    decoder_kwargs
        ``kind``, ``hidden_dims``, ``dropout`` of the decoders.
    dual_decoder
        One decoder per component (default, as published); otherwise only the global head decodes.
    mask_token
        Replace masked cells' inputs with a learnable token; zeros when false (as published).
    global_input_dim
        Width of the external input of a global-only model (e.g. PCA); ``None`` when the global
        component reads the local embedding.
    linear_part
        Give every head a closed-form linear part (:class:`interscale.nn.LinearPart`, fitted by
        ``interscale.model``): the head predicts ``linear + gamma * decoder(embedding)``.
    """

    def __init__(
        self,
        n_genes: int,
        n_embed: int,
        *,
        local_component: str | None,
        global_component: bool,
        local_kwargs: dict,
        global_kwargs: dict,
        decoder_kwargs: dict,
        dual_decoder: bool = True,
        mask_token: bool = True,
        global_input_dim: int | None = None,
        linear_part: bool = False,
    ) -> None:
        super().__init__()
        if local_component is None and not global_component:
            raise ValueError("a model needs at least one of the local and global components")
        self.n_genes = int(n_genes)
        self.n_embed = int(n_embed)
        self.has_local = local_component is not None
        self.has_global = bool(global_component)
        self.use_mask_token = bool(mask_token)
        self.dual_decoder = bool(dual_decoder)
        self.global_input_dim = global_input_dim

        if self.has_local:
            self.local_encoder = make_local_encoder(
                local_component, n_input=self.n_genes, n_embed=self.n_embed, **local_kwargs
            )
        else:
            self.local_encoder = None
        if self.has_global:
            self.global_encoder = GlobalEncoder(n_embed=self.n_embed, **global_kwargs)
            if not self.has_local:
                if global_input_dim is None:
                    raise ValueError("a global-only model needs global_input_dim")
                # Published global-only models read a fixed embedding (e.g. PCA) of width n_embed;
                # other widths are projected so that d_model stays n_embed.
                self.input_projection = (
                    nn.Identity()
                    if global_input_dim == self.n_embed
                    else nn.Linear(global_input_dim, self.n_embed)
                )
        else:
            self.global_encoder = None

        decoder_kwargs = dict(decoder_kwargs)
        kind = decoder_kwargs.pop("kind", "linear")

        def _decoder() -> nn.Module:
            return make_decoder(kind, n_embed=self.n_embed, n_output=self.n_genes, **decoder_kwargs)

        self.local_decoder = (
            _decoder() if self.has_local and (self.dual_decoder or not self.has_global) else None
        )
        self.global_decoder = _decoder() if self.has_global else None

        if linear_part:
            self.linear_part = LinearPart(self.n_genes, self.heads)
        else:
            self.linear_part = None

        mask_width = self.n_genes if self.has_local else int(global_input_dim)
        if self.use_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(mask_width))
        else:
            self.register_parameter("mask_token", None)

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads whose decoder predicts expression, in :data:`interscale.names.HEADS` order.

        The one list of a module's heads: training, inference and the linear part read it.
        """
        decoders = {"local": self.local_decoder, "global": self.global_decoder}
        return tuple(head for head in HEADS if decoders[head] is not None)

    def apply_mask(self, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Replace the rows of masked cells by the mask token (or zeros)."""
        if mask is None:
            return values
        fill = self.mask_token if self.mask_token is not None else values.new_zeros(())
        return torch.where(mask.unsqueeze(1), fill.to(values.dtype).expand_as(values), values)

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        ptr: torch.Tensor,
        mask: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        need_attention: bool = False,
        attention_top_k: int = 32,
    ) -> ModuleOutput:
        """Encode a batch of sample graphs and decode both embeddings.

        Parameters
        ----------
        x
            Expression ``(N, n_genes)`` of the cells of the batch.
        edge_index
            Spatial graph of the batch, ``(2, E)``.
        ptr
            Offsets of the samples in the batch, ``(B + 1,)``.
        mask
            Boolean ``(N,)``: cells whose input is hidden.
        features
            External input of a global-only model, ``(N, global_input_dim)``.
        need_attention
            Also return the last layer's top-k attention and the CLS attention.
        attention_top_k
            Entries kept per row of the attention matrix.
        """
        local_emb = global_emb = y_local = y_global = None
        attention = cls_attention = None
        if self.has_local:
            local_emb = self.local_encoder(self.apply_mask(x, mask), edge_index)
            global_input = local_emb
        else:
            if features is None:
                raise ValueError("a global-only model needs input features")
            global_input = self.input_projection(self.apply_mask(features, mask))
        if self.has_global:
            out = self.global_encoder(
                global_input,
                ptr,
                edge_index,
                need_attention=need_attention,
                attention_top_k=attention_top_k,
            )
            global_emb = out.embedding
            attention = out.attention
            cls_attention = out.cls_attention
            y_global = self.global_decoder(global_emb)
        if self.local_decoder is not None:
            y_local = self.local_decoder(local_emb)
        if self.linear_part is not None:
            # the linear part reads the unmasked neighbours, never the cell: masking is moot
            linear = self.linear_part(x, edge_index, ptr)
            if y_local is not None:
                y_local = linear["local"] + self.linear_part.gamma("local") * y_local
            if y_global is not None:
                y_global = linear["global"] + self.linear_part.gamma("global") * y_global
        return ModuleOutput(local_emb, global_emb, y_local, y_global, attention, cls_attention)


def module_from_config(
    model_cfg: ModelConfig,
    n_genes: int,
    has_local: bool,
    has_global: bool,
    global_input_dim: int | None = None,
) -> InterScaleModule:
    """Build the module that the ``model`` section of a config describes.

    Parameters
    ----------
    model_cfg
        ``cfg.model``.
    n_genes
        Genes decoded.
    has_local, has_global
        Which components to build.
    global_input_dim
        Width of the fixed input embedding of a global-only model.
    """
    lp = model_cfg.local_component.parameters
    gp = model_cfg.global_component.parameters
    return InterScaleModule(
        n_genes=n_genes,
        n_embed=model_cfg.n_embed,
        local_component=model_cfg.local_component.name if has_local else None,
        global_component=has_global,
        local_kwargs={
            "hidden_dim": lp.hidden_dim,
            "num_layers": lp.num_layers,
            "dropout": lp.dropout_local,
        },
        global_kwargs={
            "n_heads": gp.n_heads,
            "dim_feedforward": gp.dim_feedforward,
            "dropout": gp.dropout_global,
            "activation": gp.activation_func,
            "num_layers": gp.num_layers,
            "attention": gp.attention,
            "kernel": gp.kernel,
        },
        decoder_kwargs={
            "kind": model_cfg.decoder.type,
            "hidden_dims": tuple(model_cfg.decoder.hidden_dims),
            "dropout": model_cfg.decoder.dropout_decoder,
        },
        dual_decoder=model_cfg.decoder.dual_decoder,
        mask_token=model_cfg.mask_token,
        global_input_dim=global_input_dim,
        linear_part=model_cfg.linear_part,
    )


def init_decoder_bias(module: InterScaleModule, gene_means: np.ndarray) -> None:
    """Start each decoder's output bias at the mean expression of the training cells.

    Without this the decoders start near zero while log-normalised expression sits around a
    few units, and the first epochs are spent learning the gene means. With a linear part the
    decoders learn what it leaves: their last layer starts at zero (weights and bias), so a new
    head predicts exactly its linear part.
    """
    mean = torch.from_numpy(np.asarray(gene_means, dtype=np.float32))
    if module.linear_part is not None:
        mean = torch.zeros_like(mean)
    for decoder in (module.local_decoder, module.global_decoder):
        if decoder is None:
            continue
        bias = None
        for sub in decoder.modules():
            candidate = getattr(sub, "bias", None)
            if isinstance(candidate, nn.Parameter) and candidate.shape == mean.shape:
                bias = candidate
        if bias is not None:
            with torch.no_grad():
                bias.copy_(mean)
                if module.linear_part is not None:
                    for sub in decoder.modules():
                        if getattr(sub, "bias", None) is bias:
                            sub.weight.zero_()
