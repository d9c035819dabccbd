"""SAE architectures, registered by name, and their checkpoint format."""

from saefeat.sae import batchtopk, jumprelu, matryoshka, relu, topk  # noqa: F401  (register)
from saefeat.sae.base import (
    ArchConfig,
    SAEConfig,
    SAEOutput,
    SparseAutoencoder,
    TrainStep,
    arch_settings,
    architectures,
    config_class,
    load_sae,
    read_config,
)

__all__ = [
    "ArchConfig",
    "SAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "TrainStep",
    "arch_settings",
    "architectures",
    "config_class",
    "load_sae",
    "read_config",
]
