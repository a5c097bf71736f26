"""Every option vocabulary and AnnData key name of InterScale, in one torch-free place.

The config validates against these tuples, the neural-network code builds its layers from them,
and the command line offers them as choices; the AnnData keys that the model writes and that
evaluation and plots read are built by :class:`Key`. A name changes here or nowhere.

Examples
--------
>>> from interscale.names import Key
>>> Key.layers.y_pred("local")
'_y_pred_local'
>>> Key.obsm.embedding("global", prefix="run1")
'run1_global_emb'
"""

from __future__ import annotations

__all__ = [
    "ACCELERATORS",
    "ACTIVATIONS",
    "ATTENTION_KERNELS",
    "ATTENTION_SCOPES",
    "CLASSIFICATION_LOSSES",
    "DECODER_TYPES",
    "GLOBAL_COMPONENTS",
    "HEADS",
    "LOCAL_COMPONENTS",
    "LR_SCHEDULERS",
    "PRECISIONS",
    "PREDICTION_MODES",
    "REGRESSION_LOSSES",
    "SPLITS",
    "STRATEGIES",
    "Key",
]

#: Local (graph) encoders.
LOCAL_COMPONENTS: tuple[str, ...] = ("GCN", "GIN")
#: Global encoders (the published name of the Transformer).
GLOBAL_COMPONENTS: tuple[str, ...] = ("self-attn-transformer",)
#: Which cells a cell's query attends to in the global Transformer.
ATTENTION_SCOPES: tuple[str, ...] = ("full", "neighbourhood", "long_range")
#: How the global attention is computed: ``auto`` (FlexAttention on CUDA outside deterministic
#: mode, InterScale's C kernel on the CPU where it builds, else the blocked flash kernel),
#: ``cpu`` (the C kernel), ``flash``/``math`` (the blocked kernel, fused or plain) or ``flex``
#: (FlexAttention on any device).
ATTENTION_KERNELS: tuple[str, ...] = ("auto", "cpu", "flash", "math", "flex")
#: Feed-forward activations of the Transformer.
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")
#: Decoders from an embedding back to expression.
DECODER_TYPES: tuple[str, ...] = ("linear", "nonlinear", "linear-lse")
#: Reconstruction losses.
REGRESSION_LOSSES: tuple[str, ...] = ("GaussianNLL", "MSELoss", "SmoothL1")
#: Published classification losses (accepted by the config, not trained by InterScale).
CLASSIFICATION_LOSSES: tuple[str, ...] = ("CrossEntropy", "WeightedCE")
#: Devices a model trains on.
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "cuda")
#: Training strategies: one process, or data-parallel over processes.
STRATEGIES: tuple[str, ...] = ("single", "ddp")
#: Learning-rate schedules (published names).
LR_SCHEDULERS: tuple[str, ...] = ("CosineWarmupScheduler", "ReduceLROnPlateau")
#: Values of the split column, each assigned to whole samples.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Numerical precision of training and inference: float32 throughout, or bfloat16 autocast
#: forward passes with the loss in float32.
PRECISIONS: tuple[str, ...] = ("32", "bf16-mixed")
#: How ``get_model_output`` stores predictions: float32 layers, float16 layers, or none.
PREDICTION_MODES: tuple[str, ...] = ("dense", "float16", "none")
#: The two scales, in the order every table and plot lists them.
HEADS: tuple[str, ...] = ("local", "global")


def _check_head(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
    return head


class Key:
    """Builders of the AnnData keys InterScale reads and writes (one per AnnData slot).

    Output keys take the ``prefix`` that :meth:`get_model_output` was given, so that several
    models can write into one AnnData.
    """

    class obsp:
        """Keys of ``adata.obsp``."""

        @staticmethod
        def spatial_connectivities() -> str:
            """The spatial neighbour graph (the key squidpy's ``spatial_neighbors`` writes)."""
            return "spatial_connectivities"

        @staticmethod
        def spatial_distances() -> str:
            """Distances along the edges of the spatial graph."""
            return "spatial_distances"

        @staticmethod
        def attention(prefix: str = "") -> str:
            """Top-k attention per cell of the last Transformer layer."""
            return f"{prefix}_attn_matrix"

    class obsm:
        """Keys of ``adata.obsm``."""

        @staticmethod
        def spatial() -> str:
            """Cell coordinates."""
            return "spatial"

        @staticmethod
        def embedding(head: str, prefix: str = "") -> str:
            """The ``local`` or ``global`` embedding."""
            return f"{prefix}_{_check_head(head)}_emb"

    class layers:
        """Keys of ``adata.layers``."""

        @staticmethod
        def y_pred(head: str, prefix: str = "") -> str:
            """Held-out (or reconstructed) expression predicted by the ``local``/``global`` head."""
            return f"{prefix}_y_pred_{_check_head(head)}"

    class obs:
        """Keys of ``adata.obs``."""

        @staticmethod
        def cls_attention(prefix: str = "") -> str:
            """Attention of the CLS token on each cell."""
            return f"{prefix}_cls_attention"

    class uns:
        """Keys of ``adata.uns``."""

        #: Everything InterScale records about a setup, a model and its outputs.
        ROOT = "interscale"
        #: Inside ``ROOT``: the setup of :meth:`setup_anndata`.
        SETUP = "setup"
