"""SAE architectures, registered by name, and their checkpoint format."""

from saefeat.sae import topk  # noqa: F401  (registers "topk")
from saefeat.sae.base import (
    SAEConfig,
    SAEOutput,
    SparseAutoencoder,
    architectures,
    load_sae,
    read_config,
)

__all__ = [
    "SAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "architectures",
    "load_sae",
    "read_config",
]
