from saefeat.pipeline import run_train
from saefeat.specs import TrainSpec
from saefeat.storage.catalog import queries
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.set_registry import record_activation_set


def test_run_train_registers_a_sweep_with_its_metrics(settings, synthetic_set):
    with catalog_session(settings) as s:  # what run_harvest does
        record_activation_set(s, synthetic_set)
        s.commit()
    specs = [TrainSpec(activation_set=synthetic_set.id, d_sae=32, k=4, batch_size=64,
                       epochs=0.5, eval_ce_contexts=0),
             TrainSpec(activation_set=synthetic_set.id, d_sae=48, architecture="jumprelu",
                       k=4, batch_size=64, epochs=0.5, eval_ce_contexts=0)]  # fmt: skip
    results = run_train(specs, settings=settings)
    with catalog_session(settings) as s:
        for r in results:
            row = queries.get_sae(s, r.sae_id)
            assert row.architecture == r.sae.cfg.architecture
            assert row.metrics["fvu"] == r.metrics["fvu"]
            assert "density_histogram" in row.metrics
    assert results[1].sae.cfg.k is None
