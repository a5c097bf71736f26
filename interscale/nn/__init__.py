"""Torch modules of InterScale: local GNN encoders, the global attention encoder, decoders."""

from ._attention import ATTENTION_SCOPES, AttentionWeights
from ._decoders import (
    DECODER_KINDS,
    LinearDecoder,
    LinearLSEDecoder,
    NonLinearDecoder,
    linear_weight,
    make_decoder,
)
from ._global import GlobalEncoder, GlobalEncoderOutput
from ._local import GCNEncoder, GINEncoder, make_local_encoder

__all__ = [
    "ATTENTION_SCOPES",
    "AttentionWeights",
    "DECODER_KINDS",
    "GCNEncoder",
    "GINEncoder",
    "GlobalEncoder",
    "GlobalEncoderOutput",
    "LinearDecoder",
    "LinearLSEDecoder",
    "NonLinearDecoder",
    "linear_weight",
    "make_decoder",
    "make_local_encoder",
]
