import copy

import torch

from saefeat.lm import load_model
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE
from saefeat.training.model_evals import spliced, spliced_metrics, spliced_metrics_many, zeros

HOOK = "blocks.1.hook_resid_post"


class Identity(TopKSAE):
    """A perfect reconstruction: splicing it in must change nothing."""

    def forward(self, x):
        out = super().forward(x)
        return out._replace(x_hat=x)


def test_ce_recovered_is_one_for_a_perfect_sae_and_sane_for_a_random_one(tiny_llama):
    lm = load_model(str(tiny_llama))
    tokens = torch.randint(0, 400, (3, 16))
    perfect = spliced_metrics(Identity(SAEConfig(d_in=64, d_sae=128, k=4)), lm, tokens, HOOK,
                              batch_contexts=2)  # fmt: skip
    assert abs(perfect["ce_loss_recovered"] - 1.0) < 1e-4
    assert perfect["kl_div_with_sae"] < 1e-6 and perfect["kl_div_zero_ablation"] > 0
    assert perfect["ce_eval_tokens"] == 3 * 15
    rand = spliced_metrics(TopKSAE(SAEConfig(d_in=64, d_sae=128, k=4)), lm, tokens, HOOK)
    assert rand["kl_div_with_sae"] > 0
    assert abs(rand["ce_loss_clean"] - perfect["ce_loss_clean"]) < 1e-4


def test_splice_keeps_position_zero_and_removes_the_hook(tiny_llama):
    lm = load_model(str(tiny_llama))
    ids = torch.randint(0, 400, (1, 6))
    seen = {}
    block = lm.blocks[2]
    handle = block.register_forward_pre_hook(
        lambda m, a, kw: seen.update(x=(a or [kw["hidden_states"]])[0]), with_kwargs=True
    )  # noqa: E501
    with torch.no_grad():
        with spliced(lm, HOOK, zeros):
            lm.model(input_ids=ids)
        assert float(seen["x"][0, 1:].abs().sum()) == 0 and float(seen["x"][0, 0].abs().sum()) > 0
        lm.model(input_ids=ids)
        assert float(seen["x"][0, 1:].abs().sum()) > 0
    handle.remove()


def test_trainer_stores_ce_metrics_for_the_sets_model(settings, tiny_llama):
    from synthetic_sets import make_set

    from saefeat.specs import TrainSpec
    from saefeat.training.trainer import train_sweep

    settings.activations_dir.mkdir(parents=True)
    aset = make_set(settings.activations_dir, set_id="as-tiny", model=str(tiny_llama), d=64)
    specs = [TrainSpec(activation_set=aset.id, d_sae=128, k=4, batch_size=64, epochs=0.5,
                       eval_ce_contexts=2),
             TrainSpec(activation_set=aset.id, d_sae=128, k=4, batch_size=64, epochs=0.5,
                       eval_ce_contexts=2, hook="blocks.2.hook_resid_post"),
             TrainSpec(activation_set=aset.id, d_sae=64, k=4, batch_size=64, epochs=0.5,
                       eval_ce_contexts=0)]  # fmt: skip
    results = train_sweep(specs, settings=settings)
    for r in results[:2]:
        assert r.metrics["ce_eval_tokens"] == 2 * 7
        assert r.metrics["ce_loss_zero_ablation"] > 0 and "kl_div_with_sae" in r.metrics
    assert "ce_loss_recovered" not in results[2].metrics


def test_unloadable_model_is_reported_not_fatal(settings):
    from synthetic_sets import make_set

    from saefeat.specs import TrainSpec
    from saefeat.training.trainer import train_sae

    settings.activations_dir.mkdir(parents=True)
    aset = make_set(settings.activations_dir, model="no-such/model-anywhere")
    r = train_sae(TrainSpec(activation_set=aset.id, d_sae=32, k=4, batch_size=64, epochs=0.5,
                            eval_ce_contexts=2), settings=settings)  # fmt: skip
    assert "cannot load model" in r.metrics["ce_eval_error"]
    assert r.checkpoint.is_dir()


class OracleTranscoder(TopKSAE):
    """Predicts the MLP's output exactly from what the MLP reads: splicing it in must
    change nothing, and only through the read hook of the same forward."""

    def __init__(self, cfg, mlp):
        super().__init__(cfg)
        self.mlp = mlp

    def forward(self, x):
        out = super().forward(x)
        return out._replace(x_hat=self.mlp(x))


def test_a_transcoder_replaces_the_mlp_output_from_the_mlp_input(tiny_llama):
    lm = load_model(str(tiny_llama))
    tokens = torch.randint(0, 400, (3, 16))
    read, written = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    cfg = SAEConfig(d_in=64, d_sae=128, k=4, hook=read, hook_out=written)
    # A copy: the model's own MLP carries the splice's hook while it runs.
    oracle = OracleTranscoder(cfg, copy.deepcopy(lm.blocks[1].mlp))
    perfect = spliced_metrics(oracle, lm, tokens, read, batch_contexts=2)
    assert abs(perfect["ce_loss_recovered"] - 1.0) < 1e-4
    assert perfect["kl_div_with_sae"] < 1e-6 and perfect["kl_div_zero_ablation"] > 0
    wrong = spliced_metrics(TopKSAE(cfg), lm, tokens, read)  # an untrained transcoder
    assert wrong["kl_div_with_sae"] > 1e-4


def test_each_sae_of_a_sweep_spares_by_its_own_read_hooks_limit(tiny_llama):
    """Read hooks differ in norm (ln2 ~ units, hook_mlp_in ~ the residual's), so one limit
    for a sweep would spare every row of one of them: its CE/KL would read as perfect."""
    lm = load_model(str(tiny_llama))
    tokens = torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(3))
    written = "blocks.1.hook_mlp_out"
    pairs = [(TopKSAE(SAEConfig(d_in=64, d_sae=128, k=4, hook=h, hook_out=written)), h)
             for h in ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_in")]  # fmt: skip
    both = spliced_metrics_many(pairs, lm, tokens, norm_limits=[1e-6, float("inf")])
    alone = spliced_metrics(pairs[1][0], lm, tokens, pairs[1][1])
    assert both[1] == alone and alone["kl_div_with_sae"] > 1e-6
    assert both[0]["kl_div_with_sae"] == 0.0  # every row spared: the model as it was
