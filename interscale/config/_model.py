"""The ``model`` section: embedding size, local and global components, decoder, mask token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from interscale.names import (
    ACTIVATIONS,
    ATTENTION_KERNELS,
    ATTENTION_SCOPES,
    DECODER_TYPES,
    GLOBAL_COMPONENTS,
    LOCAL_COMPONENTS,
)

from ._aliases import local_component_note
from ._checks import (
    ConfigError,
    _as_bool,
    _as_choice,
    _as_float,
    _as_int,
    _as_int_tuple,
    _as_opt_str,
    _is_unset,
    _require,
    _set,
)
from ._section import _Section

__all__ = [
    "DecoderConfig",
    "GlobalComponentConfig",
    "GlobalParameters",
    "LocalComponentConfig",
    "LocalParameters",
    "ModelConfig",
]


@dataclass(frozen=True)
class LocalParameters(_Section):
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

    _PATH: ClassVar[str] = "model.local_component.parameters"

    hidden_dim: int = 256
    num_layers: int = 2
    dropout_local: float = 0.1

    def __post_init__(self) -> None:
        p = self._PATH
        _set(self, "hidden_dim", _as_int(self.hidden_dim, f"{p}.hidden_dim", minimum=1))
        _set(self, "num_layers", _as_int(self.num_layers, f"{p}.num_layers", minimum=1))
        _set(
            self,
            "dropout_local",
            _as_float(self.dropout_local, f"{p}.dropout_local", low=0, high=1, high_open=True),
        )


@dataclass(frozen=True)
class LocalComponentConfig(_Section):
    """``model.local_component``.

    Attributes
    ----------
    name
        ``"GCN"`` (default) or ``"GIN"``. The published ``SCVI`` and ``Precomputed`` local
        components are not supported.
    parameters
        :class:`LocalParameters`.
    """

    _PATH: ClassVar[str] = "model.local_component"
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {"parameters": lambda: LocalParameters}

    name: str = "GCN"
    parameters: LocalParameters = field(default_factory=LocalParameters)

    def __post_init__(self) -> None:
        note = local_component_note(self.name)
        _as_choice(self.name, f"{self._PATH}.name", LOCAL_COMPONENTS, note=note)
        _require(self, "parameters", LocalParameters, self._PATH)


@dataclass(frozen=True)
class GlobalParameters(_Section):
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
        Attention scope: ``"full"`` (default, as published: every other cell of the sample and
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

    _PATH: ClassVar[str] = "model.global_component.parameters"

    n_heads: int = 4
    dim_feedforward: int = 256
    dropout_global: float = 0.1
    activation_func: str = "relu"
    num_layers: int = 2
    max_seq_len: int = 2000
    long_range_attention: bool = False
    attention: str = "full"
    long_range_mask_hops: int = 0
    type_gex_embedding: str | None = None
    kernel: str = "auto"

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any]) -> None:
        # The published boolean and the new scope describe the same thing: whichever one the user
        # gave determines the other; giving both is checked for agreement in __post_init__.
        if _is_unset(kwargs.get("attention")):
            kwargs.pop("attention", None)
            if kwargs.get("long_range_attention") is True:
                kwargs["attention"] = "long_range"
        elif "long_range_attention" not in kwargs and kwargs["attention"] == "long_range":
            kwargs["long_range_attention"] = True

    def __post_init__(self) -> None:
        p = self._PATH
        _set(self, "n_heads", _as_int(self.n_heads, f"{p}.n_heads", minimum=1))
        _set(
            self,
            "dim_feedforward",
            _as_int(self.dim_feedforward, f"{p}.dim_feedforward", minimum=1),
        )
        _set(
            self,
            "dropout_global",
            _as_float(self.dropout_global, f"{p}.dropout_global", low=0, high=1, high_open=True),
        )
        _as_choice(self.activation_func, f"{p}.activation_func", ACTIVATIONS)
        _set(self, "num_layers", _as_int(self.num_layers, f"{p}.num_layers", minimum=1))
        _set(self, "max_seq_len", _as_int(self.max_seq_len, f"{p}.max_seq_len", minimum=1))
        _as_bool(self.long_range_attention, f"{p}.long_range_attention")
        _as_choice(self.attention, f"{p}.attention", ATTENTION_SCOPES)
        if self.long_range_attention != (self.attention == "long_range"):
            raise ConfigError(
                f"{p}.long_range_attention ({self.long_range_attention}) contradicts "
                f"{p}.attention ({self.attention!r}): long_range_attention: true means "
                "attention: long_range; set only one of the two keys"
            )
        _set(
            self,
            "long_range_mask_hops",
            _as_int(self.long_range_mask_hops, f"{p}.long_range_mask_hops", minimum=0),
        )
        _set(
            self,
            "type_gex_embedding",
            _as_opt_str(self.type_gex_embedding, f"{p}.type_gex_embedding"),
        )
        _as_choice(self.kernel, f"{p}.kernel", ATTENTION_KERNELS)


@dataclass(frozen=True)
class GlobalComponentConfig(_Section):
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

    _PATH: ClassVar[str] = "model.global_component"
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {"parameters": lambda: GlobalParameters}

    name: str = "self-attn-transformer"
    parameters: GlobalParameters = field(default_factory=GlobalParameters)
    latent_obsm_key: str | None = None

    def __post_init__(self) -> None:
        _as_choice(self.name, f"{self._PATH}.name", GLOBAL_COMPONENTS)
        _require(self, "parameters", GlobalParameters, self._PATH)
        _set(
            self,
            "latent_obsm_key",
            _as_opt_str(self.latent_obsm_key, f"{self._PATH}.latent_obsm_key"),
        )


@dataclass(frozen=True)
class DecoderConfig(_Section):
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

    _PATH: ClassVar[str] = "model.decoder"

    type: str = "linear"
    hidden_dims: tuple[int, ...] = (256, 128)
    dropout_decoder: float = 0.1
    dual_decoder: bool = True

    def __post_init__(self) -> None:
        p = self._PATH
        _as_choice(self.type, f"{p}.type", DECODER_TYPES)
        dims = _as_int_tuple(self.hidden_dims, f"{p}.hidden_dims", minimum=1)
        if self.type == "nonlinear" and not dims:
            raise ConfigError(f"{p}.hidden_dims must not be empty when {p}.type is 'nonlinear'")
        _set(self, "hidden_dims", dims)
        _set(
            self,
            "dropout_decoder",
            _as_float(self.dropout_decoder, f"{p}.dropout_decoder", low=0, high=1, high_open=True),
        )
        _as_bool(self.dual_decoder, f"{p}.dual_decoder")


@dataclass(frozen=True)
class ModelConfig(_Section):
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
        Give each head a linear part fitted in closed form before training (default ``False``,
        as published): a ridge regression on the mean expression of the cell's 1-hop and 2-hop
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

    _PATH: ClassVar[str] = "model"
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {
        "local_component": lambda: LocalComponentConfig,
        "global_component": lambda: GlobalComponentConfig,
        "decoder": lambda: DecoderConfig,
    }

    n_embed: int = 16
    local_component: LocalComponentConfig = field(default_factory=LocalComponentConfig)
    global_component: GlobalComponentConfig = field(default_factory=GlobalComponentConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mask_token: bool = True
    linear_part: bool = False
    save: str | None = None
    loss: str | None = None

    def __post_init__(self) -> None:
        p = self._PATH
        _set(self, "n_embed", _as_int(self.n_embed, f"{p}.n_embed", minimum=1))
        _require(self, "local_component", LocalComponentConfig, p)
        _require(self, "global_component", GlobalComponentConfig, p)
        _require(self, "decoder", DecoderConfig, p)
        n_heads = self.global_component.parameters.n_heads
        if self.n_embed % n_heads:
            raise ConfigError(
                f"{p}.n_embed ({self.n_embed}) must be divisible by "
                f"{GlobalParameters._PATH}.n_heads ({n_heads})"
            )
        _as_bool(self.mask_token, f"{p}.mask_token")
        _as_bool(self.linear_part, f"{p}.linear_part")
        _set(self, "save", _as_opt_str(self.save, f"{p}.save"))
        _set(self, "loss", _as_opt_str(self.loss, f"{p}.loss"))
