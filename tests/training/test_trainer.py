import pytest
import torch

from saefeat.errors import SpecError
from saefeat.sae import load_sae
from saefeat.specs import TrainSpec
from saefeat.training import trainer
from saefeat.training.run import Run, TrainingDiverged
from saefeat.training.trainer import state_dir, train_sae, train_sweep


def spec(aset, **kw) -> TrainSpec:
    base = dict(activation_set=aset.id, d_sae=64, k=4, batch_size=32, epochs=1.0, lr=3e-3,
                eval_ce_contexts=0)  # fmt: skip
    return TrainSpec(**(base | kw))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu", "matryoshka_batchtopk"])
def test_every_architecture_trains_and_reloads(settings, synthetic_set, arch):
    r = train_sae(spec(synthetic_set, architecture=arch, epochs=2.0), settings=settings)
    assert r.losses[-1] < r.losses[0]
    assert r.metrics["fvu"] < 1.0 and r.metrics["l0"] > 0
    again = load_sae(r.checkpoint)
    x = torch.randn(5, 16)
    torch.testing.assert_close(again(x).x_hat, r.sae(x).x_hat)
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        assert float(again.threshold.min()) > 0  # the EMA threshold is in the checkpoint
        assert r.metrics["l0"] < 4 * 3  # inference uses the threshold, L0 stays near k


@pytest.mark.parametrize("optimizer_state", ["fp32", "bf16"])
def test_resume_is_exact(settings, synthetic_set, tmp_path, optimizer_state):
    """A sweep (TopK on one hook, BatchTopK with its threshold EMA on the other) stopped
    mid-epoch and resumed ends with the same weights as an uninterrupted one; with bf16
    Adam moments too (their stochastic rounding is a hash of element and step)."""
    from synthetic_sets import make_set

    from saefeat.config import Settings

    specs = [spec(synthetic_set, checkpoint_every_tokens=64, epochs=2.0,
                  optimizer_state=optimizer_state),
             spec(synthetic_set, checkpoint_every_tokens=64, epochs=2.0,
                  architecture="batchtopk", hook="blocks.2.hook_resid_post",
                  optimizer_state=optimizer_state)]  # fmt: skip
    whole = train_sweep(specs, settings=settings)

    other = Settings(home=tmp_path / "other")
    other.activations_dir.mkdir(parents=True)
    make_set(other.activations_dir)

    def stop_at_7(step, total, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sweep(specs, settings=other, progress=stop_at_7)
    want = {"fp32": torch.float32, "bf16": torch.bfloat16}[optimizer_state]
    for r in whole:
        saved = torch.load(state_dir(other, r.sae_id) / "state.pt", weights_only=False)  # step 6
        moments = [t for s in saved["opt"]["state"].values() for k, t in s.items() if k != "step"]
        assert moments and all(t.dtype == want for t in moments)
    resumed = train_sweep(specs, settings=other)
    for a, b in zip(whole, resumed, strict=True):
        for name, value in a.sae.state_dict().items():
            assert torch.equal(value, b.sae.state_dict()[name]), name
        assert a.losses == b.losses
        assert not state_dir(other, a.sae_id).exists()  # cleaned up after success


def test_a_sweep_killed_between_two_runs_saves_resumes_at_their_common_step(
    settings, synthetic_set, tmp_path, monkeypatch
):
    """The second run's save at step 4 never happens (the job was cancelled between the
    two): the first run's state is at step 4, the second's at step 2. Resume takes both
    from step 2 (the first's kept previous state) and ends as an uninterrupted sweep."""
    from synthetic_sets import make_set

    from saefeat.config import Settings
    from saefeat.training import state as st

    specs = [spec(synthetic_set, checkpoint_every_tokens=64, epochs=2.0),
             spec(synthetic_set, checkpoint_every_tokens=64, epochs=2.0, k=8)]  # fmt: skip
    whole = train_sweep(specs, settings=settings)
    other = Settings(home=tmp_path / "other")
    other.activations_dir.mkdir(parents=True)
    make_set(other.activations_dir)
    real, saves = st.save_state, []

    def save_state(folder, state, **kw):
        saves.append(state["position"]["step"])
        if len(saves) == 4:  # step 4, second run
            raise KeyboardInterrupt
        return real(folder, state, **kw)

    monkeypatch.setattr(st, "save_state", save_state)
    with pytest.raises(KeyboardInterrupt):
        train_sweep(specs, settings=other)
    monkeypatch.setattr(st, "save_state", real)
    steps = [torch.load(state_dir(other, r.sae_id) / "state.pt", weights_only=False)
             ["position"]["step"] for r in whole]  # fmt: skip
    assert saves == [2, 2, 4, 4] and steps == [4, 2]
    resumed = train_sweep(specs, settings=other)
    for a, b in zip(whole, resumed, strict=True):
        for name, value in a.sae.state_dict().items():
            assert torch.equal(value, b.sae.state_dict()[name]), name
        assert a.losses == b.losses


def test_nan_stops_and_keeps_last_checkpoint(settings, synthetic_set, monkeypatch):
    real = Run.step

    def step(self, x, i, total, y=None):
        return real(self, x * float("nan") if i == 5 else x, i, total)

    monkeypatch.setattr(Run, "step", step)
    s = spec(synthetic_set, checkpoint_every_tokens=64)
    with pytest.raises(TrainingDiverged, match="at step 5.*step 4"):
        train_sae(s, settings=settings)
    assert (state_dir(settings, s.sae_id()) / "state.pt").is_file()
    assert not (settings.saes_dir / s.sae_id()).exists()


def test_resume_from_another_hook_is_refused(settings, synthetic_set):
    s = spec(synthetic_set, checkpoint_every_tokens=64)

    def stop(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(s, settings=settings, progress=stop)
    folder = state_dir(settings, s.sae_id())
    before = (folder / "state.pt").read_bytes()
    other = spec(synthetic_set, hook="blocks.2.hook_resid_post", resume_from=str(folder))
    with pytest.raises(SpecError, match="another run.*hook"):
        train_sae(other, settings=settings)
    assert (folder / "state.pt").read_bytes() == before
    assert not (settings.saes_dir / other.sae_id()).exists()


def test_state_from_newer_format_is_refused(settings, synthetic_set):
    from saefeat.training import state as st

    s = spec(synthetic_set)
    folder = state_dir(settings, s.sae_id())
    st.save_state(folder, {"identity": {}})
    st_file = folder / "state.pt"
    raw = torch.load(st_file, weights_only=False) | {"format": 99}
    torch.save(raw, st_file)
    with pytest.raises(SpecError, match="format 99"):
        train_sae(s, settings=settings)


def test_sweep_reads_each_batch_once(settings, synthetic_set, monkeypatch):
    from saefeat.storage.reader import ShuffledBatchReader

    reads: list[str] = []
    training = [False]
    real_iter, real_batches = ShuffledBatchReader.iter_epoch, trainer._batches

    def counting(self, epoch=0, start_batch=0):
        for x in real_iter(self, epoch, start_batch):
            if training[0]:
                reads.append(self.hook)
            yield x

    def batches(*args):
        training[0] = True
        yield from real_batches(*args)
        training[0] = False

    monkeypatch.setattr(ShuffledBatchReader, "iter_epoch", counting)
    monkeypatch.setattr(trainer, "_batches", batches)
    specs = [spec(synthetic_set, d_sae=32), spec(synthetic_set, d_sae=64, k=8),
             spec(synthetic_set, architecture="relu"),
             spec(synthetic_set, hook="blocks.2.hook_resid_post")]  # fmt: skip
    results = train_sweep(specs, settings=settings)
    assert [r.sae.cfg.d_sae for r in results] == [32, 64, 64, 64]
    assert results[3].sae.cfg.hook == "blocks.2.hook_resid_post"
    steps = results[0].metrics["steps"]
    # Three SAEs on hook 1, one on hook 2: each hook's batches are read once.
    assert reads.count("blocks.1.hook_resid_post") == steps
    assert reads.count("blocks.2.hook_resid_post") == steps


def test_sweep_needs_shared_batches(settings, synthetic_set):
    with pytest.raises(SpecError, match="batch_size must agree"):
        train_sweep([spec(synthetic_set), spec(synthetic_set, batch_size=16, d_sae=32)],
                    settings=settings)  # fmt: skip


def test_width_that_cannot_fit_is_refused_with_numbers(settings, synthetic_set):
    with pytest.raises(SpecError, match=r"needs about .* GiB .* GiB free") as e:
        train_sae(spec(synthetic_set, d_sae=4_000_000_000, k=4), settings=settings)
    assert e.value.field == "d_sae"


def test_memory_estimate_counts_bf16_adam_state_at_half():
    from saefeat.training.memory import estimate_bytes

    fp32 = estimate_bytes(2304, 65536, 4096, "topk")
    bf16 = estimate_bytes(2304, 65536, 4096, "topk", optimizer_state="bf16")
    assert fp32["adam"] == 2 * fp32["params"] and bf16["adam"] == fp32["params"]
    assert fp32["total"] - bf16["total"] == fp32["params"]
    assert bf16["total"] == bf16["params"] + bf16["grads"] + bf16["adam"] + bf16["activations"]


@pytest.mark.parametrize("k", [0, 64, 100])
def test_k_out_of_range_is_refused(synthetic_set, k):
    with pytest.raises(ValueError, match="k must|greater than 0"):
        spec(synthetic_set, k=k)


def test_geometric_median_resists_outliers():
    from saefeat.training.init import geometric_median

    x = torch.randn(500, 4) * 0.1
    x[:20] += 100.0
    assert geometric_median(x).norm() < 1.0 < x.mean(0).norm()


def test_lr_schedule_warms_up_and_decays():
    from saefeat.training.schedule import lr_factor

    f = [lr_factor(s, 100, 0.1, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0
    assert f[99] < f[85] < 1.0
    assert lr_factor(0, 100, 0.0, 0.0) == 1.0
