"""A model's revision reaches its weights (issue 28, item 4).

Two revisions of one tiny Llama, with different weights, sit in a local Hugging Face hub
cache laid out as the hub writes it (`models--org--name/snapshots/<commit>/`, and
`refs/<branch>` holding the commit), read with HF_HUB_OFFLINE=1. A harvest at a revision,
the index's model load, live search and steering's load must each run that revision's
weights, not the ones the bare name resolves to (`main`, here v1).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from saefeat.corpus import CorpusRoots
from saefeat.features.vocab import token_strings, vocab_projections
from saefeat.lm import cached_model, load_model, parse_hook, run_to_hooks
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE
from saefeat.specs import HarvestSpec, IndexSpec
from saefeat.workers.harvest import prepare_set
from saefeat.workers.index import accumulate_shards, build_index
from saefeat.workers.shard import ShardHarvester

REPO = "saefeat-test/tiny-llama"
REVISIONS = ("v1", "v2")
HOOK = "blocks.2.hook_resid_post"


def _commit(revision: str) -> str:
    return hashlib.sha1(revision.encode()).hexdigest()  # 40 hex digits, like a git commit


@pytest.fixture(scope="module")
def hub_cache(tiny_llama, tmp_path_factory) -> Path:
    """v1 is the tiny Llama of conftest; v2 the same config and tokenizer with weights
    drawn from another seed. `main` points at v1."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cache = tmp_path_factory.mktemp("hf-hub")
    repo = cache / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    for seed, revision in enumerate(REVISIONS):
        snapshot = repo / "snapshots" / _commit(revision)
        shutil.copytree(tiny_llama, snapshot)
        if seed:
            torch.manual_seed(seed)
            LlamaForCausalLM(LlamaConfig.from_pretrained(tiny_llama)).save_pretrained(snapshot)
        (repo / "refs" / revision).write_text(_commit(revision))
    (repo / "refs" / "main").write_text(_commit("v1"))
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch) -> Path:
    """The hub cache above as the only hub there is: offline, read from hub_cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached_model.cache_clear()
    yield hub_cache
    cached_model.cache_clear()


def _snapshot(cache: Path, revision: str) -> Path:
    return cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / _commit(revision)


def _weights(lm) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in lm.model.state_dict().items()}


def _assert_weights_of(lm, cache: Path, revision: str) -> None:
    """`lm` holds exactly the weights of `revision`'s snapshot folder."""
    want = _weights(load_model(str(_snapshot(cache, revision))))
    got = _weights(lm)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"{revision}: {k}")


def test_the_two_revisions_differ(offline_hub):
    """The fixture itself: two revisions, two sets of weights, and `main` is v1."""
    a, b = (load_model(str(_snapshot(offline_hub, r))) for r in REVISIONS)
    assert not torch.equal(a.model.model.embed_tokens.weight, b.model.model.embed_tokens.weight)
    _assert_weights_of(load_model(REPO), offline_hub, "v1")


@pytest.mark.parametrize("revision", REVISIONS)
def test_cached_model_loads_the_revision_asked(offline_hub, revision):
    lm = cached_model(REPO, revision, "cpu")
    _assert_weights_of(lm, offline_hub, revision)
    assert lm.revision == revision
    assert cached_model(REPO, revision, "cpu") is lm  # one copy per (name, revision)


def test_cached_model_keeps_revisions_apart(offline_hub):
    """Asking for v1 and then v2 in one process must not hand back v1's copy."""
    v1, v2 = cached_model(REPO, "v1", "cpu"), cached_model(REPO, "v2", "cpu")
    assert v1 is not v2
    assert not torch.equal(v1.model.model.embed_tokens.weight, v2.model.model.embed_tokens.weight)


def test_cached_model_refuses_the_old_argument_order():
    with pytest.raises(TypeError, match="name, revision, device, dtype"):
        cached_model(REPO, "cpu", torch.float32)  # (name, device, dtype): revision missing


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(f'{{"text": "def f{i}(x):\\n    return x * {i} + 1\\n"}}\n'
                            for i in range(40)))  # fmt: skip
    return path


def _harvest(revision: str, corpus: Path, root: Path):
    """A set harvested at `revision` in this process: prepare_set (tokenizes at the
    revision) and the shard worker, the body of the Ray actor."""
    spec = HarvestSpec(
        model=REPO, revision=revision, hooks=[HOOK], corpus=[{"path": str(corpus)}],
        ctx_len=16, token_budget=16 * 8, contexts_per_shard=4, batch_size=4,
        model_dtype="float32", storage_dtype="float32",
    )  # fmt: skip
    aset, _ = prepare_set(spec, root, CorpusRoots.of([corpus.parent]))
    worker = ShardHarvester(spec.model_dump_json(), str(aset.path), "cpu", threads=1)
    for s in range(aset.n_shards):
        worker.harvest_shard(s)
    return aset


def _acts(aset) -> torch.Tensor:
    return torch.cat([aset.read_shard(s, HOOK, verify=True) for s in range(aset.n_shards)])


def test_a_harvest_runs_the_weights_of_its_revision(offline_hub, corpus, tmp_path):
    sets = {r: _harvest(r, corpus, tmp_path / "sets") for r in REVISIONS}
    assert sets["v1"].id != sets["v2"].id  # the revision names the set
    assert np.array_equal(sets["v1"].tokens(), sets["v2"].tokens())  # one tokenizer
    for revision, aset in sets.items():
        assert aset.revision == revision
        # The activations are those of the revision's own weights, loaded from its folder.
        lm = load_model(str(_snapshot(offline_hub, revision)))
        tokens = torch.from_numpy(aset.tokens()).long()
        want = run_to_hooks(lm, tokens, [parse_hook(HOOK)])[HOOK].reshape(-1, lm.d_model)
        torch.testing.assert_close(_acts(aset), want)
    assert not torch.allclose(_acts(sets["v1"]), _acts(sets["v2"]))


def test_index_projects_through_the_unembedding_of_its_revision(offline_hub, corpus, tmp_path):
    """build_index loads the model for the vocabulary projection: the set's revision's."""
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=64, d_sae=32, k=4, model=REPO, hook=HOOK))
    sae_path = sae.save(tmp_path / "sae")
    spec = IndexSpec(sae="s", n_examples=2, n_quantile_bins=0, n_neighbours=0)
    promoted = {}
    for revision in REVISIONS:
        aset = _harvest(revision, corpus, tmp_path / "sets")
        acc = accumulate_shards(str(sae_path), str(aset.path), aset.committed_shards(),
                                spec.model_dump_json(), "cpu")  # fmt: skip
        index = build_index(acc, sae, aset, spec)
        promoted[revision] = index.projections
        # The same projection from the revision's own folder.
        lm = load_model(str(_snapshot(offline_hub, revision)))
        W_U, scale = lm.unembedding()
        strings = token_strings(lm.tokenizer, W_U.shape[0])
        want = vocab_projections(sae.W_dec.detach(), W_U, scale, strings, spec.n_vocab)
        assert repr(index.projections) == repr(want)
    assert repr(promoted["v1"]) != repr(promoted["v2"])


@pytest.mark.parametrize("revision", REVISIONS)
def test_live_search_and_steering_load_the_revision_of_the_sae(offline_hub, tmp_path, revision):
    from saefeat.features import live

    sae = TopKSAE(SAEConfig(d_in=64, d_sae=32, k=4, model=REPO, hook=HOOK))
    checkpoint = str(sae.save(tmp_path / f"sae-{revision}"))
    lm, _, _ = live.loaded(REPO, revision, checkpoint)
    _assert_weights_of(lm, offline_hub, revision)
    tokens = live.features_for_sae(REPO, revision, checkpoint, HOOK, "def f(x):", 3)
    ids = lm.tokenizer("def f(x):", return_tensors="pt").input_ids
    assert [t.token_id for t in tokens] == ids[0].tolist()
