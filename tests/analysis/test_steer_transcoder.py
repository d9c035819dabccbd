"""Steering with a transcoder: its decoder rows are added (and its features clamped) at
the MLP's output, the hook it writes, with its features encoded from the MLP's input, the
hook it reads, in the same forward. Measured on the tiny Llama's MLP output."""

from __future__ import annotations

import pytest
import torch

from saefeat.analysis.steer import (
    DefaultCache,
    FeatureStrength,
    SteerRequest,
    encode_prompt,
    make_edit,
    steer,
)
from saefeat.lm import cached_model, parse_hook
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE

READ = "blocks.1.ln2.hook_normalized"
WRITE = "blocks.1.hook_mlp_out"
PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=64, d_sae=96, k=8, hook=READ, hook_out=WRITE, skip_connection=True)
    sae = TopKSAE(cfg).eval()
    with torch.no_grad():  # a skip path that is not zero, so the error term is not y - decode
        sae.W_skip.copy_(0.1 * torch.randn_like(sae.W_skip))
        sae.b_enc.add_(0.05)
    return cached_model(str(tiny_llama), None, "cpu"), sae


def request(*features, method="add", n=6, temperature=0.0):
    fs = tuple(FeatureStrength(i, s) for i, s in features)
    return SteerRequest(PROMPT, fs, method, temperature, 0, n)


class MLPWatch:
    """Records, on the first forward only, the MLP's input as the transcoder reads it
    (the norm's output), the MLP's own output (before any edit: this hook is registered
    before steering's) and what the block added to the residual (the edited output)."""

    def __init__(self, lm):
        self.lm, self.seen = lm, {}
        block = lm.blocks[1]
        self.handles = [
            lm.module_for(parse_hook(READ)).register_forward_hook(self._keep("read")),
            block.mlp.register_forward_hook(self._keep("mlp")),
            block.post_attention_layernorm.register_forward_pre_hook(self._keep_in("mid")),
            block.register_forward_hook(self._keep("post")),
        ]

    def _keep(self, name):
        def hook(module, args, out):
            t = out[0] if isinstance(out, tuple) else out
            self.seen.setdefault(name, t.detach().clone())

        return hook

    def _keep_in(self, name):
        def hook(module, args):
            self.seen.setdefault(name, args[0].detach().clone())

        return hook

    def written(self) -> torch.Tensor:
        """The MLP's output as the residual received it: resid_post - resid_mid."""
        return self.seen["post"] - self.seen["mid"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_add_with_strength_zero_is_the_default(tiny):
    lm, sae = tiny
    result = steer(lm, sae, READ, request((5, 0.0), (17, 0.0), temperature=0.9), cache=None)
    assert result.hook == WRITE and result.read_hook == READ
    assert result.steered.token_ids == result.default.token_ids
    torch.testing.assert_close(torch.tensor(result.steered.promoted_logprobs),
                               torch.tensor(result.default.promoted_logprobs))  # fmt: skip


def test_add_moves_the_mlp_output_by_strength_times_the_decoder_row(tiny):
    lm, sae = tiny
    s = 40.0
    with MLPWatch(lm) as watch:  # the prompt's forward: row 0 default, row 1 steered
        result = steer(lm, sae, READ, request((7, s)), cache=None)
    assert result.hook == WRITE
    raw, written = watch.seen["mlp"], watch.written()
    assert raw.shape[0] == 2
    torch.testing.assert_close(written[0], raw[0], atol=1e-5, rtol=0)  # default row: untouched
    torch.testing.assert_close(written[1, 0], raw[1, 0], atol=1e-5, rtol=0)  # position 0 too
    change = written[1, 1:] - raw[1, 1:]
    torch.testing.assert_close(change, (s * sae.W_dec[7]).expand_as(change).detach(),
                               atol=1e-4, rtol=1e-5)  # fmt: skip
    assert result.steered.token_ids != result.default.token_ids or (
        result.steered.promoted_logprobs != result.default.promoted_logprobs
    )


def test_clamp_moves_the_output_by_the_change_of_the_feature_read_at_the_input(tiny):
    lm, sae = tiny
    s = 9.0
    with MLPWatch(lm) as watch:
        steer(lm, sae, READ, request((11, s), method="clamp"), cache=None)
    with torch.inference_mode():  # encoded from the READ hook
        z = sae.dense_activations(watch.seen["read"][1, 1:])
    change = watch.written()[1, 1:] - watch.seen["mlp"][1, 1:]
    expected = (s - z[:, 11:12]) * sae.W_dec[11].detach()
    torch.testing.assert_close(change, expected, atol=1e-4, rtol=1e-4)


def test_clamping_a_feature_to_its_own_value_changes_nothing(tiny):
    lm, sae = tiny
    # One position: the transcoder's feature read at the MLP's input, set to what it is.
    ids = encode_prompt(lm, request((0, 1.0)))
    with MLPWatch(lm) as watch, torch.no_grad():
        lm.model(input_ids=ids)
    read, y = watch.seen["read"][0], watch.seen["mlp"][0]
    p = 2
    with torch.inference_mode():
        z = sae.dense_activations(read)
        f = int(z[p].argmax())
        assert z[p, f] > 0
        same = make_edit(sae, request((f, float(z[p, f])), method="clamp"))
        torch.testing.assert_close(same(y[p : p + 1], read[p : p + 1]), y[p : p + 1])
        with pytest.raises(ValueError, match="pass `read`"):
            same(y[p : p + 1])  # a transcoder's clamp cannot encode what it writes

    # A whole generation: a feature that fires nowhere in the prompt or its default
    # continuation (at the MLP's input), clamped to 0, steers nothing; encoding the MLP's
    # output instead would have moved it.
    default = steer(lm, sae, READ, request((0, 0.0)), cache=None).default
    full = torch.cat([ids[0], torch.tensor(default.token_ids[:-1])])[None]
    with MLPWatch(lm) as watch, torch.no_grad():
        lm.model(input_ids=full)
    with torch.inference_mode():
        at_input = sae.dense_activations(watch.seen["read"][0, 1:]).amax(0)
        at_output = sae.dense_activations(watch.seen["mlp"][0, 1:]).amax(0)
    silent = torch.nonzero((at_input == 0) & (at_output > 0)).flatten().tolist()
    assert silent, "no feature tells the read hook from the written one"
    result = steer(lm, sae, READ, request((silent[0], 0.0), method="clamp"), cache=DefaultCache())
    assert result.steered.token_ids == default.token_ids == result.default.token_ids
    torch.testing.assert_close(torch.tensor(result.steered.promoted_logprobs),
                               torch.tensor(result.default.promoted_logprobs))  # fmt: skip


def test_an_sae_still_edits_its_own_hook(tiny_llama):
    lm = cached_model(str(tiny_llama), None, "cpu")
    torch.manual_seed(1)
    sae = TopKSAE(SAEConfig(d_in=64, d_sae=96, k=8, hook=WRITE)).eval()
    with MLPWatch(lm) as watch:
        result = steer(lm, sae, WRITE, request((3, 20.0)), cache=None)
    assert result.hook == result.read_hook == WRITE
    change = watch.written()[1, 1:] - watch.seen["mlp"][1, 1:]
    torch.testing.assert_close(change, (20.0 * sae.W_dec[3]).expand_as(change).detach(),
                               atol=1e-4, rtol=1e-5)  # fmt: skip
