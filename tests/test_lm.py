import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from saefeat.errors import SpecError
from saefeat.lm import LanguageModel, _find_blocks, load_model, parse_hook, run_to_hooks


def test_parse_hook_names():
    p = parse_hook("blocks.3.hook_resid_post")
    assert (p.layer, p.kind, p.name) == (3, "resid_post", "blocks.3.hook_resid_post")
    for bad in ["blocks.x.hook_resid_post", "blocks.3.hook_resid", "layer.3", ""]:
        with pytest.raises(SpecError, match="hook"):
            parse_hook(bad)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load_model(str(tiny_llama))


def test_resid_hooks_match_hidden_states(tiny):
    ids = torch.randint(0, 500, (2, 12))
    points = [parse_hook(h) for h in ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_post"]]
    acts = run_to_hooks(tiny, ids, points)
    hs = tiny.model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts["blocks.1.hook_resid_pre"], hs[1])
    torch.testing.assert_close(acts["blocks.2.hook_resid_post"], hs[3])


def test_forward_stops_after_deepest_hook(tiny):
    ran = []
    h = tiny.blocks[3].register_forward_hook(lambda *a: ran.append(1))
    try:
        run_to_hooks(tiny, torch.randint(0, 500, (1, 8)), [parse_hook("blocks.1.hook_mlp_out")])
    finally:
        h.remove()
    assert ran == []


def test_mlp_and_attn_out_sum_to_residual_update(tiny):
    ids = torch.randint(0, 500, (1, 10))
    names = ["blocks.2.hook_resid_pre", "blocks.2.hook_attn_out", "blocks.2.hook_mlp_out",
             "blocks.2.hook_resid_post"]  # fmt: skip
    a = run_to_hooks(tiny, ids, [parse_hook(n) for n in names])
    total = a[names[0]] + a[names[1]] + a[names[2]]
    torch.testing.assert_close(total, a[names[3]], atol=1e-5, rtol=1e-5)


def test_mlp_input_hooks_are_what_the_mlp_reads(tiny):
    """hook_mlp_in is the residual after attention (resid_pre + attn_out);
    ln2.hook_normalized is the norm's output, what the MLP maps to hook_mlp_out."""
    ids = torch.randint(0, 500, (1, 10))
    names = ["blocks.2.hook_resid_pre", "blocks.2.hook_attn_out", "blocks.2.hook_mlp_in",
             "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out"]  # fmt: skip
    a = run_to_hooks(tiny, ids, [parse_hook(n) for n in names])
    torch.testing.assert_close(a[names[2]], a[names[0]] + a[names[1]], atol=1e-5, rtol=1e-5)
    block = tiny.blocks[2]
    torch.testing.assert_close(block.post_attention_layernorm(a[names[2]]), a[names[3]])
    torch.testing.assert_close(block.mlp(a[names[3]]), a[names[4]])
    assert parse_hook(names[3]).name == names[3] and parse_hook(names[3]).layer == 2


def test_transcoder_pairs_are_one_layers_mlp():
    from saefeat.shapes import check_transcoder_hooks

    check_transcoder_hooks("blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")
    check_transcoder_hooks("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out")
    for hook, out, field in [
        ("blocks.3.ln2.hook_normalized", "blocks.4.hook_mlp_out", "hook_out"),
        ("blocks.3.hook_resid_pre", "blocks.3.hook_mlp_out", "hook"),
        ("blocks.3.hook_mlp_in", "blocks.3.hook_resid_post", "hook_out"),
        ("blocks.3.hook_mlp_in", "blocks.3.mlp_out", "hook_out"),
    ]:
        with pytest.raises(SpecError) as e:
            check_transcoder_hooks(hook, out)
        assert e.value.field == field


def test_layer_beyond_model_is_refused(tiny):
    with pytest.raises(SpecError, match="layers 0..3"):
        tiny.check_hooks(["blocks.4.hook_resid_post"])


def test_unknown_model_path(tmp_path):
    with pytest.raises(SpecError, match="model"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="config.json"):
        load_model(str(tmp_path / "empty"))


def _wrap(model, is_encoder=False):
    return LanguageModel("x", model.eval(), None, _find_blocks(model), is_encoder)


def test_gpt2_hooks():
    cfg = GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=100, n_positions=64)
    lm = _wrap(GPT2LMHeadModel(cfg))
    ids = torch.randint(0, 100, (1, 9))
    pts = lm.check_hooks(["blocks.1.hook_resid_post", "blocks.1.hook_attn_out"])
    a = run_to_hooks(lm, ids, pts)
    hs = lm.model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(a["blocks.1.hook_resid_post"], hs[2])
    W_U, scale = lm.unembedding()
    assert W_U.shape == (100, 32) and scale.shape == (32,)


def test_bert_encoder_hooks():
    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                     intermediate_size=64, vocab_size=100)  # fmt: skip
    lm = _wrap(BertModel(cfg), is_encoder=True)
    ids = torch.randint(0, 100, (1, 7))
    pts = lm.check_hooks(["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"])
    a = run_to_hooks(lm, ids, pts)
    hs = lm.model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(a["blocks.0.hook_resid_post"], hs[1])
    assert a["blocks.1.hook_mlp_out"].shape == (1, 7, 32)
    W_U, scale = lm.unembedding()
    assert W_U.shape == (100, 32) and scale is None


# Fresh interpreters (transformers not yet imported), each with 8 threads reading a model's
# config and tokenizer at the same moment, as two jobs submitted together do in the API
# process. Without saefeat.lm's TRANSFORMERS_LOCK, 2 of 6 such processes here failed with
# "cannot import name 'AutoConfig' from 'transformers'".
_FIRST_LOADS = """
import sys, threading
from saefeat.lm import model_config_and_tokenizer
barrier, errors = threading.Barrier(8), []
def load():
    barrier.wait()
    try:
        model_config_and_tokenizer(sys.argv[1])
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=load) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
sys.exit(errors[0] if errors else 0)
"""


def test_first_transformers_loads_from_many_threads_at_once(tiny_llama):
    import subprocess
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRST_LOADS, str(tiny_llama)], stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(6)
    ]
    failures = [p.communicate(timeout=300)[1] for p in procs if p.wait(timeout=300) != 0]
    assert not failures, failures[0][-2000:]
