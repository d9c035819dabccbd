"""Settings from the environment (SAEFEAT_ prefix)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    # Most tokens one steering request may generate (each costs two forwards).
    steer_max_new_tokens: int = 64

    # What a harvest spec sent over HTTP may reach (docs/SECURITY.md). Corpus paths must
    # resolve under one of these folders (default: <home>/corpora); relative paths are
    # taken from the first. The built-in corpus is always allowed.
    corpus_roots: Annotated[list[Path] | None, NoDecode] = None
    # Models besides the embedded one and folders under models_dir: ids or paths.
    allowed_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_ctx_len: int = Field(4096, ge=2)
    max_token_budget: int = Field(1_000_000_000, ge=1)
    max_batch_size: int = Field(1024, ge=1)

    @field_validator("corpus_roots", "allowed_models", mode="before")
    @classmethod
    def _list_from_env(cls, v):
        """From the environment: a JSON list, or items separated by commas."""
        if isinstance(v, str):
            v = v.strip()
            return json.loads(v) if v.startswith("[") else [x for x in v.split(",") if x]
        return v

    # Request limits (docs/SECURITY.md, "Request limits"). Bodies over these sizes are refused
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
    # Label and vote writes: a token bucket per API key (429 past it). A person labelling
    # by hand never meets it; a leaked `label` key cannot flood the catalog.
    label_rate_per_minute: float = Field(default=120.0, gt=0)
    label_burst: int = Field(default=30, ge=1)
    # Live text search needs a key with the `read` scope when true.
    live_requires_key: bool = False
    # Signs pagination cursors; default: made once in $SAEFEAT_HOME/secret (mode 0600).
    cursor_secret: str | None = None

    # Jobs (workers/jobs.py, workers/harvest.py).
    # Seconds a job's Ray workers may take to be scheduled and start (model loaded).
    # A wait the cluster can end (its totals fit the request, it is only busy) has no
    # bound: busy means wait. This bounds the others (a remote cluster that may or may
    # not grow a node that fits); past it the job fails with what it asked for.
    schedule_timeout_s: float = Field(default=600.0, gt=0)
    # Jobs one server process runs at once; the rest wait queued, round robin between
    # API keys (workers/jobs.py). None: the cluster's CPUs.
    max_running_jobs: int | None = Field(default=None, ge=1)
    # A job picked up again after its runner stopped (shutdown, crash) more often than
    # this fails, with the history of its attempts.
    max_job_resumes: int = Field(default=3, ge=0)
    # Seconds a cancel waits for the workers of the run to be gone before giving up.
    actor_exit_timeout_s: float = Field(default=60.0, gt=0)
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
    def corpus_root_paths(self) -> list[Path]:
        return list(self.corpus_roots) if self.corpus_roots is not None else [self.corpora_dir]

    @property
    def corpora_dir(self) -> Path:
        return self.home / "corpora"

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
