"""Our SAELens export, loaded by SAELens itself (the real sae-lens package, a dev extra):
the same encode, decode and forward on random input, and the metadata a SAELens user
acts on (hub model id, hook, context size) as the catalog records them."""

from __future__ import annotations

import json

import pytest
import sae_lens  # a dev extra: a missing package fails here, it is never skipped
import torch
from test_interop import random_sae

from saefeat.sae.base import load_sae
from saefeat.sae.interop import TO_SAELENS, export_saelens, export_stored, import_saelens
from saefeat.shapes import EMBEDDED_MODEL, EMBEDDED_MODEL_HUB_ID

# SAELens's advice when a cfg names a model revision (it reads the kwargs we wrote)
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*model_from_pretrained_kwargs:UserWarning")
HOOK = "blocks.3.hook_resid_post"
# SAELens's class for each architecture it names (`architecture` in cfg.json)
THEIR_CLASS = {"topk": "TopKSAE", "standard": "StandardSAE", "jumprelu": "JumpReLUSAE"}


def _same_outputs(theirs, ours, d_in: int) -> None:
    torch.manual_seed(3)
    x = torch.randn(11, d_in) * 2
    with torch.no_grad():
        acts = ours.dense_activations(x)
        assert (acts > 0).any() and (acts == 0).any()  # the nonlinearity does something
        torch.testing.assert_close(theirs.encode(x), acts, rtol=1e-5, atol=1e-5)
        every = torch.arange(acts.shape[1]).expand_as(acts)  # our decode, all latents
        torch.testing.assert_close(theirs.decode(acts), ours.decode(acts, every),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        torch.testing.assert_close(theirs(x), ours(x).x_hat, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(TO_SAELENS))
def test_saelens_loads_every_architecture_we_export(tmp_path, arch):
    sae = random_sae(arch)
    sae.cfg.model = EMBEDDED_MODEL
    path = export_saelens(sae, tmp_path / arch, context_size=64)
    theirs = sae_lens.SAE.load_from_disk(path)
    assert type(theirs).__name__ == THEIR_CLASS[TO_SAELENS[arch]]
    assert theirs.cfg.d_in == 12 and theirs.cfg.d_sae == 48
    if arch == "topk":
        assert theirs.cfg.k == 5
    meta = theirs.cfg.metadata
    assert meta.model_name == EMBEDDED_MODEL_HUB_ID  # what anyone else loads
    assert meta.hook_name == HOOK and meta.context_size == 64
    assert meta.prepend_bos is True
    _same_outputs(theirs, sae, 12)
    # and read back here, the model is the name saefeat loads it by
    assert import_saelens(path).cfg.model == EMBEDDED_MODEL


def test_a_hub_model_keeps_its_name(tmp_path):
    sae = random_sae("topk")
    sae.cfg.model = "EleutherAI/pythia-70m"
    path = export_saelens(sae, tmp_path / "sl", revision="step1000")
    meta = sae_lens.SAE.load_from_disk(path).cfg.metadata
    assert meta.model_name == "EleutherAI/pythia-70m"
    assert meta.model_from_pretrained_kwargs == {"revision": "step1000"}


def test_a_trained_sae_exports_its_sets_model_and_context(settings, tmp_path):
    """export_stored (what `saefeat export --to saelens` runs) reads the activation set's
    model, revision, ctx_len and BOS policy from the catalog when the Zarr set is gone."""
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.models import ActivationSetRow, LanguageModelRow
    from saefeat.storage.catalog.registry import register_sae

    sae = random_sae("jumprelu")
    sae.cfg.model, sae.cfg.activation_set = EMBEDDED_MODEL, "as-0123456789abcdef"
    sae.save(settings.saes_dir / "sae-trained")
    with catalog_session(settings) as s:
        model = LanguageModelRow(name=EMBEDDED_MODEL, revision=None, d_model=12, n_layers=30)
        s.add(model)
        s.flush()
        s.add(ActivationSetRow(id="as-0123456789abcdef", model_id=model.id, hook_names=[HOOK],
                               ctx_len=96, n_contexts=4, n_tokens=384, dtype="float32",
                               path="/gone", status="complete", stats={}))  # fmt: skip
        register_sae(s, sae_id="sae-trained", name="t", model_name=EMBEDDED_MODEL,
                     hook_name=HOOK, architecture="jumprelu", d_in=12, d_sae=48,
                     activation_set_id="as-0123456789abcdef")  # fmt: skip
        s.commit()
    path = export_stored(settings, "sae-trained", "saelens", tmp_path / "out")
    raw = json.loads((path / "cfg.json").read_text())["metadata"]
    assert raw["model_name"] == EMBEDDED_MODEL_HUB_ID and raw["context_size"] == 96
    theirs = sae_lens.SAE.load_from_disk(path)
    assert theirs.cfg.metadata.context_size == 96
    assert theirs.cfg.metadata.saefeat_activation_set == "as-0123456789abcdef"
    _same_outputs(theirs, load_sae(settings.saes_dir / "sae-trained"), 12)


def test_the_zarr_set_gives_ctx_len_revision_and_bos(settings, tmp_path):
    """With the Zarr set here, export reads it: its ctx_len, revision and BOS policy."""
    import numpy as np

    from saefeat.storage.activations import ActivationSet

    set_id = "as-fedcba9876543210"
    ActivationSet.create(
        settings.activations_dir / f"{set_id}.zarr", set_id=set_id,
        spec={"model": EMBEDDED_MODEL, "revision": "v1", "bos": "none", "hooks": [HOOK]},
        model=EMBEDDED_MODEL, hooks=[HOOK], d_model=12, tokens=np.zeros((2, 5), np.int32),
        doc_index=np.zeros(2, np.int32), doc_offset=np.zeros(2, np.int32), doc_ids=["d"],
        contexts_per_shard=2, storage_dtype="float32", n_layers=4,
    )  # fmt: skip
    sae = random_sae("topk")
    sae.cfg.model, sae.cfg.activation_set = None, set_id
    sae.save(settings.saes_dir / "sae-z")
    meta = sae_lens.SAE.load_from_disk(
        export_stored(settings, "sae-z", "saelens", tmp_path / "out")
    ).cfg.metadata
    assert meta.model_name == EMBEDDED_MODEL_HUB_ID and meta.context_size == 5
    assert meta.model_from_pretrained_kwargs == {"revision": "v1"}
    assert meta.prepend_bos is False
