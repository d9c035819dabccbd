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

    # Jobs (workers/jobs.py, workers/harvest.py).
    # Seconds a job's Ray workers may take to be scheduled and start (model loaded);
    # past that the job fails with what it asked for and what the cluster has.
    schedule_timeout_s: float = Field(default=600.0, gt=0)
    # A job picked up again after its runner stopped (shutdown, crash) more often than
    # this fails, with the history of its attempts.
    max_job_resumes: int = Field(default=3, ge=0)
    # Seconds a cancel waits for the workers of the run to be gone before giving up.
    actor_exit_timeout_s: float = Field(default=60.0, gt=0)

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
