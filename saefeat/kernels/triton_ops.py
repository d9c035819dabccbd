"""The Triton primitives, under the same names and signatures as reference.py."""

from .adam import adam_, decoder_adam_
from .gemm import encode_jump, latent_rows
from .jumprelu import jump_backward
from .sparse import gather_matmul, gather_rowdot, segment_matmul
from .topk import batch_topk_select, encode_topk

__all__ = [
    "adam_",
    "decoder_adam_",
    "batch_topk_select",
    "encode_jump",
    "encode_topk",
    "gather_matmul",
    "gather_rowdot",
    "jump_backward",
    "latent_rows",
    "segment_matmul",
]
