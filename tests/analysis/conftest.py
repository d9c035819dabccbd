"""Fixtures of the steering tests: a fresh home with a random SAE on the tiny Llama."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from saefeat.config import get_settings
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.registry import register_sae

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture
def tiny_sae_home(tmp_path, monkeypatch, tiny_llama) -> Iterator[Callable[[str], None]]:
    """SAEFEAT_HOME is a fresh folder; the fixture's value registers a random TopK SAE
    (d_in 64, d_sae 96, k 4) on the tiny Llama at HOOK under the id it is given, its
    checkpoint saved under the home."""
    monkeypatch.setenv("SAEFEAT_HOME", str(tmp_path))
    get_settings.cache_clear()
    torch.manual_seed(0)

    def register(sae_id: str) -> None:
        path = TopKSAE(SAEConfig(d_in=64, d_sae=96, k=4, hook=HOOK)).save(tmp_path / "sae")
        with catalog_session(get_settings()) as s:
            register_sae(s, sae_id=sae_id, name=sae_id, model_name=str(tiny_llama),
                         hook_name=HOOK, architecture="topk", d_in=64, d_sae=96, k=4,
                         checkpoint_path=str(path))  # fmt: skip
            s.commit()

    yield register
    get_settings.cache_clear()
