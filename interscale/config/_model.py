"""The ``model`` section: embedding size, local and global components, decoder, mask token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from interscale.names import (
    ACTIVATIONS,
    ATTENTION_KERNELS,
    ATTENTION_SCOPES,
    DECODER_TYPES,
    GLOBAL_COMPONENTS,
    LOCAL_COMPONENTS,
)

from ._aliases import UNSUPPORTED_LOCAL_COMPONENTS
from ._checks import (
    _DROPOUT,
    _OPT_STR,
    ConfigError,
    _as_bool,
    _as_int_tuple,
    _choice,
    _int,
    _is_unset,
    _Section,
    _value,
)

__all__ = [
    "DecoderConfig",
    "GlobalComponentConfig",
    "GlobalParameters",
    "LocalComponentConfig",
    "LocalParameters",
    "ModelConfig",
]


@dataclass(frozen=True)
class LocalParameters(_Section, path="model.local_component.parameters"):
    """``model.local_component.parameters``: the GNN (same defaults for GCN and GIN).

    Attributes
    ----------
    hidden_dim
        Width of the hidden graph-convolution layers (default 256).
    num_layers
        Number of graph-convolution layers, >= 1 (default 2).
    dropout_local
        Dropout after each hidden layer, in [0, 1) (default 0.1).
    """

    hidden_dim: int = _value(256, _int(minimum=1))
    num_layers: int = _value(2, _int(minimum=1))
    dropout_local: float = _value(0.1, _DROPOUT)


@dataclass(frozen=True)
class LocalComponentConfig(_Section, path="model.local_component"):
    """``model.local_component``.

    Attributes
    ----------
    name
        ``"GCN"`` (default) or ``"GIN"``. The published ``SCVI`` and ``Precomputed`` local
        components are not supported.
    parameters
        :class:`LocalParameters`.
    """

    name: str = _value("GCN", _choice(LOCAL_COMPONENTS, UNSUPPORTED_LOCAL_COMPONENTS))
    parameters: LocalParameters = field(default_factory=LocalParameters)


@dataclass(frozen=True)
class GlobalParameters(_Section, path="model.global_component.parameters"):
    """``model.global_component.parameters``: the Transformer encoder.

    Attributes
    ----------
    n_heads
        Attention heads (default 4); ``model.n_embed`` must be divisible by it.
    dim_feedforward
        Width of the feed-forward block (default 256).
    dropout_global
        Dropout inside the encoder layers, in [0, 1) (default 0.1).
    activation_func
        ``"relu"`` (default) or ``"gelu"``.
    num_layers
        Number of encoder layers (default 2).
    max_seq_len
        Compatibility only (default 2000). The published model truncated each sample to this many
        cells; InterScale never truncates, every cell gets a global embedding.
    long_range_attention
        Published switch (default ``False``); ``True`` is the same as ``attention: long_range``.
        Always consistent with ``attention`` after loading.
    attention
        Attention scope: ``"full"`` (default: every other cell of the sample and
        the CLS token), ``"neighbourhood"`` (spatial neighbours and CLS) or ``"long_range"``
        (every cell that is neither the cell itself nor one of its neighbours, and CLS).
    long_range_mask_hops
        Compatibility only (default 0).
    type_gex_embedding
        Compatibility only (default ``None``).
    kernel
        How the ``full``/``long_range`` attention is computed: ``"auto"`` (default: FlexAttention
        on CUDA outside deterministic mode; on the CPU InterScale's C kernel, built on first use,
        or the fused flash kernel with a warning where no C compiler works), ``"cpu"`` (the C
        kernel, float32 on the CPU), ``"flash"`` or ``"math"`` (the blocked kernel, fused or
        plain) or ``"flex"`` (FlexAttention on any device; on CPU it runs eagerly and is meant
        for checks). Not part of the architecture: a checkpoint loads under any kernel.
    """

    n_heads: int = _value(4, _int(minimum=1))
    dim_feedforward: int = _value(256, _int(minimum=1))
    dropout_global: float = _value(0.1, _DROPOUT)
    activation_func: str = _value("relu", _choice(ACTIVATIONS))
    num_layers: int = _value(2, _int(minimum=1))
    max_seq_len: int = _value(2000, _int(minimum=1))
    long_range_attention: bool = _value(False, _as_bool)
    attention: str = _value("full", _choice(ATTENTION_SCOPES))
    long_range_mask_hops: int = _value(0, _int(minimum=0))
    type_gex_embedding: str | None = _value(None, _OPT_STR)
    kernel: str = _value("auto", _choice(ATTENTION_KERNELS))

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any], given: set[str]) -> None:
        # The published boolean and the new scope describe the same thing: whichever one was
        # given determines the other (an override of one drops the old value of the other);
        # giving both is checked for agreement in _validate.
        if "attention" in given and "long_range_attention" not in given:
            kwargs.pop("long_range_attention", None)
        elif "long_range_attention" in given and "attention" not in given:
            kwargs.pop("attention", None)
        if _is_unset(kwargs.get("attention")):
            kwargs.pop("attention", None)
            if kwargs.get("long_range_attention") is True:
                kwargs["attention"] = "long_range"
        elif "long_range_attention" not in kwargs and kwargs["attention"] == "long_range":
            kwargs["long_range_attention"] = True

    def _validate(self) -> None:
        if self.long_range_attention != (self.attention == "long_range"):
            p = self._PATH
            raise ConfigError(
                f"{p}.long_range_attention ({self.long_range_attention}) contradicts "
                f"{p}.attention ({self.attention!r}): long_range_attention: true means "
                "attention: long_range; set only one of the two keys"
            )


@dataclass(frozen=True)
class GlobalComponentConfig(_Section, path="model.global_component"):
    """``model.global_component``.

    Attributes
    ----------
    name
        ``"self-attn-transformer"`` (the only global component).
    parameters
        :class:`GlobalParameters`.
    latent_obsm_key
        Compatibility only (default ``None``).
    """

    name: str = _value("self-attn-transformer", _choice(GLOBAL_COMPONENTS))
    parameters: GlobalParameters = field(default_factory=GlobalParameters)
    latent_obsm_key: str | None = _value(None, _OPT_STR)


@dataclass(frozen=True)
class DecoderConfig(_Section, path="model.decoder"):
    """``model.decoder``.

    Attributes
    ----------
    type
        ``"linear"`` (default), ``"nonlinear"`` or ``"linear-lse"``.
    hidden_dims
        Hidden widths of the nonlinear decoder (default ``(256, 128)``); must not be empty
        when ``type`` is ``"nonlinear"``.
    dropout_decoder
        Dropout of the nonlinear decoder, in [0, 1) (default 0.1).
    dual_decoder
        One decoder per component (default ``True``; the published default was ``False``, but
        the local/global attribution needs one decoder per component).
    """

    type: str = _value("linear", _choice(DECODER_TYPES))
    hidden_dims: tuple[int, ...] = _value((256, 128), lambda v, p: _as_int_tuple(v, p, minimum=1))
    dropout_decoder: float = _value(0.1, _DROPOUT)
    dual_decoder: bool = _value(True, _as_bool)

    def _validate(self) -> None:
        if self.type == "nonlinear" and not self.hidden_dims:
            p = self._PATH
            raise ConfigError(f"{p}.hidden_dims must not be empty when {p}.type is 'nonlinear'")


@dataclass(frozen=True)
class ModelConfig(_Section, path="model"):
    """``model``.

    Attributes
    ----------
    n_embed
        Embedding size of both components (default 16).
    local_component
        :class:`LocalComponentConfig`.
    global_component
        :class:`GlobalComponentConfig`.
    decoder
        :class:`DecoderConfig`.
    mask_token
        Replace masked inputs with a learnable token (default ``True``); ``False`` zeroes them as
        the published model did.
    linear_part
        Give each head a linear part fitted in closed form before training (default ``False``):
        a ridge regression on the mean expression of the cell's 1-hop and 2-hop
        neighbours (local head) and also the leave-one-out mean of its sample (global head),
        with design and penalty chosen by cross-validation over whole training samples, as
        ``interscale.tl.linear_baselines`` fits its floors. The decoders then learn what the
        linear part leaves, and after training each gene keeps its decoder's contribution only
        as far as the validation samples support it (a factor in [0, 1] per gene and head), so
        the linear floor is a special case of every head. Needs at least 2 training samples.
    save
        Output directory written by the published training script (default ``None``); kept as
        written, relative to the current working directory.
    loss
        Compatibility only (default ``None``); the loss is ``optim.loss``.
    """

    n_embed: int = _value(16, _int(minimum=1))
    local_component: LocalComponentConfig = field(default_factory=LocalComponentConfig)
    global_component: GlobalComponentConfig = field(default_factory=GlobalComponentConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mask_token: bool = _value(True, _as_bool)
    linear_part: bool = _value(False, _as_bool)
    save: str | None = _value(None, _OPT_STR)
    loss: str | None = _value(None, _OPT_STR)

    def _validate(self) -> None:
        n_heads = self.global_component.parameters.n_heads
        if self.n_embed % n_heads:
            raise ConfigError(
                f"{self._PATH}.n_embed ({self.n_embed}) must be divisible by "
                f"{GlobalParameters._PATH}.n_heads ({n_heads})"
            )
