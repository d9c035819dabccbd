import pytest
import torch

from saefeat.sae import SAEConfig, architectures, load_sae
from saefeat.sae.base import config_class, register, sae_class
from saefeat.sae.batchtopk import BatchTopKSAE
from saefeat.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from saefeat.sae.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig, group_ends
from saefeat.sae.relu import ReLUConfig, ReLUSAE
from saefeat.sae.topk import TopKConfig, TopKSAE
from saefeat.specs import TrainSpec

K_ARCHS = ("topk", "batchtopk", "matryoshka_batchtopk")


def make(arch: str, d_in=12, d_sae=48, **extra):
    torch.manual_seed(0)
    k = 4 if arch in K_ARCHS else None
    return sae_class(arch)(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k,
                                     extra=extra))  # fmt: skip


def variance(x):
    return (x - x.mean(0)).pow(2).sum()


def test_every_registered_architecture_is_a_train_spec_choice():
    for arch in architectures():
        spec = TrainSpec(activation_set="as-x", architecture=arch)
        assert spec.architecture.name == arch and isinstance(spec.architecture, config_class(arch))
        again = TrainSpec.model_validate_json(spec.model_dump_json())
        assert again.architecture == spec.architecture  # the config survives JSON


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="registered twice"):
        register(TopKConfig)(type("Again", (TopKSAE,), {}))
    assert sae_class("topk") is TopKSAE


def test_flat_and_legacy_settings_fold_into_the_config():
    old = TrainSpec(activation_set="as-x", architecture="jumprelu", k=8, jumprelu_bandwidth=0.5,
                    jumprelu_sparsity="l0_penalty", l1_coefficient=3.0)  # fmt: skip
    assert old.architecture == JumpReLUConfig(target_l0=None, bandwidth=0.5)
    assert (
        TrainSpec(activation_set="as-x", architecture="jumprelu", k=8).architecture.target_l0 == 8
    )
    relu = TrainSpec(activation_set="as-x", architecture="relu", k=4, l1_coefficient=0.5)
    assert relu.architecture == ReLUConfig(l1_coefficient=0.5)
    with pytest.raises(ValueError, match="summing to 1"):
        TrainSpec(activation_set="as-x", architecture="matryoshka_batchtopk",
                  matryoshka_groups=[0.5, 0.6])  # fmt: skip


def test_checkpoint_settings_round_trip_and_old_files_take_defaults():
    cfg = MatryoshkaConfig(k=3, matryoshka_groups=(0.5, 0.5))
    k, extra = cfg.to_checkpoint()
    assert k == 3 and extra == {"threshold_ema": 0.01, "matryoshka_groups": [0.5, 0.5]}
    assert MatryoshkaConfig.from_checkpoint(k, extra | {"token_rule": {}}) == cfg
    assert JumpReLUConfig.from_checkpoint(None, {"target_l0": None}).target_l0 is None


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu", "matryoshka_batchtopk"])
def test_every_architecture_has_the_sparse_interface_and_roundtrips(tmp_path, arch):
    sae = make(arch)
    x = torch.randn(9, 12)
    step = sae.training_loss(x, variance(x))
    step.loss.backward()
    assert torch.isfinite(step.loss) and "fvu" in step.parts
    assert sae.W_enc.grad is not None
    sae.after_step(step.out)
    sae.eval()
    vals, idx = sae.encode(x)
    assert vals.shape == idx.shape and vals.shape[0] == 9 and idx.dtype == torch.int64
    dense = sae.dense_activations(x)
    assert dense.shape == (9, 48)
    again = load_sae(sae.save(tmp_path / arch))
    torch.testing.assert_close(again(x).x_hat, sae(x).x_hat)


def test_batchtopk_threshold_is_an_ema_of_the_smallest_kept_activation():
    sae = make("batchtopk", threshold_ema=0.5)
    x = torch.randn(32, 12)
    with torch.no_grad():
        out = sae(x)  # training mode: batch top-k
    assert (out.vals > 0).sum() <= 32 * 4
    sae.after_step(out)
    first = float(out.vals[out.vals > 0].min())
    assert torch.allclose(sae.threshold, torch.full((48,), first))
    with torch.no_grad():
        out2 = sae(torch.randn(32, 12))
    sae.after_step(out2)
    second = float(out2.vals[out2.vals > 0].min())
    assert torch.allclose(sae.threshold, torch.full((48,), 0.5 * first + 0.5 * second))
    sae.eval()  # inference is JumpReLU with that threshold
    vals, _ = sae.encode(x)
    assert bool((vals[vals > 0] > sae.threshold[0]).all())


def test_jumprelu_threshold_learns_through_the_ste_and_target_l0():
    sae = make("jumprelu", target_l0=2.0, bandwidth=1.0, init_threshold=0.1)
    x = torch.randn(64, 12)
    step = sae.training_loss(x, variance(x))
    assert step.parts["l0"] > 2  # far above target: the sparsity term pushes thresholds up
    step.parts["sparsity"].backward()
    assert sae.threshold.grad is not None and float(sae.threshold.grad.sum()) < 0
    assert sae.W_enc.grad is None or float(sae.W_enc.grad.abs().sum()) == 0


def test_jumprelu_threshold_stays_non_negative():
    sae = make("jumprelu")
    with torch.no_grad():
        sae.threshold.fill_(-1.0)
    sae.after_step(None)
    assert float(sae.threshold.detach().min()) == 0.0


def test_relu_l1_is_weighted_by_decoder_norms():
    sae = make("relu", l1_coefficient=1.0)
    x = torch.randn(8, 12)
    base = sae.training_loss(x, variance(x)).parts["l1"]
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    again = sae.training_loss(x, variance(x)).parts["l1"].detach()
    assert float(again) == pytest.approx(3 * float(base.detach()))
    assert ReLUSAE.unit_norm_decoder is False


def test_matryoshka_loss_sums_prefix_losses():
    assert group_ends([0.25, 0.25, 0.5], 48) == [12, 24, 48]
    sae = make("matryoshka_batchtopk", matryoshka_groups=[0.25, 0.25, 0.5])
    assert isinstance(sae, MatryoshkaBatchTopKSAE) and isinstance(sae, BatchTopKSAE)
    x = torch.randn(16, 12)
    step = sae.training_loss(x, variance(x))
    assert float(step.loss.detach()) > float(step.parts["fvu"].detach())  # prefixes: worse
    assert isinstance(make("jumprelu"), JumpReLUSAE)


def test_a_small_imported_jumprelu_loads_without_a_training_target(tmp_path):
    """Checkpoints from elsewhere carry no target L0; the default (32) binds training only."""
    sae = sae_class("jumprelu")(SAEConfig(d_in=12, d_sae=16, architecture="jumprelu", k=None))
    assert load_sae(sae.save(tmp_path / "j")).settings.target_l0 == 32
    with pytest.raises(ValueError, match="target_l0 must be < d_sae"):
        TrainSpec(activation_set="as-x", architecture="jumprelu", d_sae=16)
