"""Torch modules of InterScale: local GNN encoders, the global attention encoder, decoders."""

import importlib

# Public name -> submodule. Submodules load on first use: the local encoders import
# torch_geometric (about 3 s), which the decoders and the attention kernels do not need
# (e.g. :func:`interscale.evaluation.gene_loadings` only reads a decoder weight).
_EXPORTS = {
    "ATTENTION_SCOPES": "_attention",
    "AttentionWeights": "_attention",
    "attention_kernel": "_kernel_choice",
    "CpuKernelStatus": "_cpu_kernel",
    "cpu_kernel_status": "_cpu_kernel",
    "DECODER_KINDS": "_decoders",
    "describe_attention": "_kernel_choice",
    "LinearDecoder": "_decoders",
    "LinearLSEDecoder": "_decoders",
    "NonLinearDecoder": "_decoders",
    "linear_weight": "_decoders",
    "make_decoder": "_decoders",
    "GlobalEncoder": "_global",
    "GlobalEncoderOutput": "_global",
    "FEATURE_BLOCKS": "_linear",
    "LinearPart": "_linear",
    "neighbourhood_features": "_linear",
    "GCNEncoder": "_local",
    "GINEncoder": "_local",
    "make_local_encoder": "_local",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
