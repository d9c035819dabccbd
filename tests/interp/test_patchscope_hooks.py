"""Where Patchscope adds a decoder row: at the hook the decoder writes (a transcoder's
MLP output), and into a module's input for the hooks that read one (mlp_in)."""

from __future__ import annotations

import pytest
import torch

from saefeat.interp.catalog_io import ExplainPlan
from saefeat.interp.patchscope import _patch
from saefeat.lm import load_model, parse_hook
from saefeat.specs import ExplainSpec


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama):
    return load_model(str(tiny_llama))


def _seen(lm, module, *, pre: bool, vectors=None, hook=None, position=2) -> torch.Tensor:
    """What `module` takes in (pre) or gives out, with `vectors` patched at `hook`: the
    watching hook is registered after the patch, so it sees the patched tensor."""
    ids = lm.tokenizer("def add(a, b):", return_tensors="pt").input_ids
    seen = {}
    handles = []
    with lm.exclusive(), torch.no_grad():
        if vectors is not None:
            handles.append(_patch(lm, hook, position, vectors))
        if pre:
            handles.append(module.register_forward_pre_hook(
                lambda m, args: seen.setdefault("t", args[0].clone())))  # fmt: skip
        else:
            handles.append(module.register_forward_hook(
                lambda m, args, out: seen.setdefault("t", out.clone())))  # fmt: skip
        try:
            lm.model(input_ids=ids)
        finally:
            for h in handles:
                h.remove()
    return seen["t"]


@pytest.mark.parametrize(
    ("hook", "pre"),
    [("blocks.1.hook_mlp_out", False), ("blocks.1.hook_mlp_in", True),
     ("blocks.1.ln2.hook_normalized", False)],
)  # fmt: skip
def test_the_row_is_added_where_the_hook_is(tiny_lm, hook, pre):
    module = tiny_lm.module_for(parse_hook(hook))
    v = torch.randn(1, tiny_lm.d_model)
    before = _seen(tiny_lm, module, pre=pre)
    after = _seen(tiny_lm, module, pre=pre, vectors=v, hook=hook)
    expected = before.clone()
    expected[:, 2] += v[0]
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)


def test_a_transcoders_subject_is_its_output_hook():
    plan = ExplainPlan(spec=ExplainSpec(sae="tc"), sae_id="tc", checkpoint="/ckpt",
                       activation_set="as-1", hook="blocks.3.ln2.hook_normalized", todo=[],
                       feature_ids={0: (1, 0.1, 2.0)}, skipped_existing=0, skipped_dead=0,
                       model=("m", None), hook_out="blocks.3.hook_mlp_out")  # fmt: skip
    subject = plan.subject()
    assert subject is not None and subject.hook == "blocks.3.hook_mlp_out"
    plan.hook_out = None  # an SAE: its own hook
    assert plan.subject().hook == "blocks.3.ln2.hook_normalized"
