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
    # An OpenAI-compatible chat endpoint for explanations and judge scorers (issue 13),
    # e.g. http://127.0.0.1:8000/v1; unset: the offline explainer and no-judge scorers.
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float = 60.0

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
