"""Settings from the environment (SAEFEAT_ prefix)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAEFEAT_")

    home: Path = Field(default_factory=lambda: Path.home() / ".saefeat")
    # Default: SQLite in the home folder.
    database_url: str | None = None
    # Default: start a local Ray.
    ray_address: str | None = None
    # Where models converted for loading (the embedded GGUF) are cached.
    model_cache: Path | None = None
    # Reads of the catalog need a key with the `read` scope when true.
    require_read_key: bool = False
    # A key created at start-up with every scope, for bootstrapping a deployment.
    bootstrap_api_key: str | None = None

    # Request limits (docs/SECURITY-requests.md). Bodies over these sizes are refused
    # with 413 before they are read: labels and votes, live text, everything else.
    label_body_bytes: int = Field(default=8 * 1024, ge=256)
    live_body_bytes: int = Field(default=32 * 1024, ge=256)
    body_bytes: int = Field(default=64 * 1024, ge=256)
    # Live text search: threads that run the model, requests that may wait for one (more
    # answer 503), and a per-client token bucket (a key, else the client address: 429).
    live_workers: int = Field(default=2, ge=1)
    live_queue: int = Field(default=4, ge=0)
    live_rate_per_minute: float = Field(default=30.0, gt=0)
    live_burst: int = Field(default=10, ge=1)
    # Live text search needs a key with the `read` scope when true.
    live_requires_key: bool = False
    # Signs pagination cursors; default: made once in $SAEFEAT_HOME/secret (mode 0600).
    cursor_secret: str | None = None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'catalog.db'}"

    @property
    def models_dir(self) -> Path:
        return self.model_cache or self.home / "models"

    @property
    def activations_dir(self) -> Path:
        return self.home / "activations"

    @property
    def saes_dir(self) -> Path:
        return self.home / "saes"


@lru_cache
def get_settings() -> Settings:
    return Settings()
