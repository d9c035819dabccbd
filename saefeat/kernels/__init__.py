"""Fused SAE training kernels: Triton on CUDA, a plain-torch reference elsewhere.

One signature per operation; `dispatch.py` picks the implementation per call
(`SAEFEAT_KERNELS=auto|triton|torch`). Layouts are documented in encode.py, decode.py and
auxk.py. Importing this package needs only torch; triton is imported on first Triton use.
"""

from .auxk import auxk_loss
from .decode import sparse_decode
from .dispatch import compute_dtype, triton_available, use_triton
from .encode import batch_topk_encode, jumprelu_encode, topk_encode
from .optim import SAEAdam

__all__ = [
    "SAEAdam",
    "auxk_loss",
    "batch_topk_encode",
    "compute_dtype",
    "jumprelu_encode",
    "sparse_decode",
    "topk_encode",
    "triton_available",
    "use_triton",
]
