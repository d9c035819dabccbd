"""SAE architectures, registered by name, and their checkpoint format."""

from saefeat.sae import batchtopk, jumprelu, matryoshka, relu, topk  # noqa: F401  (register)
from saefeat.sae.base import (
    SAEConfig,
    SAEOutput,
    SparseAutoencoder,
    TrainStep,
    architectures,
    load_sae,
    read_config,
)

__all__ = [
    "SAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "TrainStep",
    "architectures",
    "load_sae",
    "read_config",
]
