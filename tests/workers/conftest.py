"""Harvest fixtures: a small multi-hook, multi-source spec over two weighted sources."""

from __future__ import annotations

import pytest
from harvest_refs import HOOKS

from saefeat.specs import HarvestSpec


@pytest.fixture
def two_sources(tmp_path) -> list[dict]:
    a = tmp_path / "corpus-a"
    a.mkdir()
    for i in range(6):
        (a / f"a{i}.txt").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 8)
    b = tmp_path / "b.jsonl"
    b.write_text("".join(f'{{"text": "Sparse features number {i} of the stream. "}}\n' * 1
                         for i in range(60)))  # fmt: skip
    return [{"path": str(a), "weight": 2.0}, {"path": str(b), "weight": 1.0}]


@pytest.fixture
def spec(tiny_llama, two_sources) -> HarvestSpec:
    return HarvestSpec(
        model=str(tiny_llama),
        hooks=HOOKS,
        corpus=two_sources,
        ctx_len=16,
        token_budget=16 * 20,
        contexts_per_shard=4,
        batch_size=2,
        model_dtype="float32",
        storage_dtype="float32",
    )
