"""Fixtures shared by the whole suite: a tiny real Llama, one Ray, isolated homes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The embedded model's one-time GGUF conversion (~25 s) is shared by every test and run.
os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache" / "saefeat" / "models"))

TINY_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int\n    y: int\n",
    "Sparse autoencoders find features in the residual stream of language models.",
    "import sys\nprint(sys.version)\nfor i in range(10):\n    print(i * i)\n",
]


def build_tiny_llama(path: Path, *, n_layers: int = 4, d_model: int = 64, seed: int = 0) -> Path:
    """A random-initialised Llama with a byte-level BPE tokenizer trained on the built-in
    corpus, saved as a normal transformers folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from saefeat.corpus import builtin_python_docs

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    docs = [d.text for _, d in zip(range(40), builtin_python_docs(), strict=False)]
    tok.train_from_iterator(docs + TINY_TEXTS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=fast.vocab_size if hasattr(fast, "vocab_size") else 512,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama_b(tiny_llama, tmp_path_factory) -> Path:
    """Model B of a model diff: the tiny Llama's tokenizer (its very files), other weights."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama-b")
    shutil.copytree(tiny_llama, path, dirs_exist_ok=True)
    torch.manual_seed(1)
    LlamaForCausalLM(AutoConfig.from_pretrained(path)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting one costs ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a cluster another test or user started
            num_cpus=2,
            object_store_memory=80 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Settings pointing at a fresh home; the embedded model cache is shared."""
    from saefeat.config import Settings, get_settings

    monkeypatch.setenv("SAEFEAT_HOME", str(tmp_path / "home"))
    # The tests write their corpora in tmp_path: it is the corpus root.
    monkeypatch.setenv("SAEFEAT_CORPUS_ROOTS", json.dumps([str(tmp_path)]))
    get_settings.cache_clear()
    s = Settings()
    yield s
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    from saefeat.storage.catalog import upgrade

    path = tmp_path_factory.mktemp("template") / "catalog.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def migrated_sqlite_url(tmp_path, sqlite_template: Path) -> str:
    # Copying a migrated file is much faster than running Alembic for every test.
    path = tmp_path / "catalog.db"
    import shutil

    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"
