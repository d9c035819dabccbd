"""The token rule: position 0 and massive-norm tokens, from the set's stored statistics."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from synthetic_sets import CTX, HOOKS, N_CTX, PER_SHARD, synthetic_rows  # noqa: E402

from saefeat.storage.activations import ActivationSet  # noqa: E402
from saefeat.storage.exclusion import (  # noqa: E402
    TokenRule,
    excluded_rows,
    exclusion_report,
    row_norms,
    rule_for_set,
)
from saefeat.storage.reader import ShuffledBatchReader  # noqa: E402
from saefeat.storage.stats import set_statistics  # noqa: E402

MASSIVE = [(3, 1), (10, 1), (20, 5)]  # (context, position) of tokens made 100x larger


def _set(tmp_path, massive=MASSIVE) -> ActivationSet:
    tokens = np.zeros((N_CTX, CTX), dtype=np.int64)
    aset = ActivationSet.create(
        tmp_path / "m.zarr", set_id="as-m", spec={}, model="synthetic", hooks=HOOKS, d_model=16,
        tokens=tokens, doc_index=np.zeros(N_CTX), doc_offset=np.zeros(N_CTX), doc_ids=["d"],
        contexts_per_shard=PER_SHARD, storage_dtype="float32",
    )  # fmt: skip
    rows = {h: synthetic_rows(N_CTX * CTX, seed=i) for i, h in enumerate(HOOKS)}
    for c, p in massive:
        for x in rows.values():
            x[c * CTX + p] *= 100
    for shard in range(aset.n_shards):
        r0, r1 = aset.shard_rows(shard)
        aset.write_shard(shard, {h: x[r0:r1] for h, x in rows.items()})
    aset.mark_complete(set_statistics(aset))
    return aset


def test_massive_tokens_are_counted_and_never_served(tmp_path):
    aset = _set(tmp_path)
    rule = rule_for_set(aset, HOOKS[0])
    assert rule.threshold == 10 and rule.median_norm is not None
    report = exclusion_report(aset, HOOKS[0], rule)
    assert report["massive"] == len(MASSIVE)
    assert report["position_0"] == N_CTX
    assert report["excluded"] == N_CTX + len(MASSIVE)
    assert report["massive_positions"] == {"1": 2, "5": 1}
    reader = ShuffledBatchReader(aset, HOOKS[0], 50, excluded=excluded_rows(aset, HOOKS[0], rule))
    assert reader.rows_per_epoch == N_CTX * (CTX - 1) - len(MASSIVE)
    served = torch.cat(list(reader.iter_epoch(0)))
    assert served.norm(dim=1).max() < rule.norm_limit
    # The statistics' scale and variance come from typical tokens only.
    st = aset.stats[HOOKS[0]]
    assert st["token_rule"]["massive"] == len(MASSIVE)
    clean = _set(tmp_path / "clean", massive=[])
    assert abs(st["scale"] / clean.stats[HOOKS[0]]["scale"] - 1) < 0.05


def test_old_sets_keep_working(tmp_path):
    aset = _set(tmp_path)
    # A set harvested before the norms were stored: computed on first use.
    del aset.group["norms"]
    assert np.isfinite(row_norms(aset, HOOKS[1])).all()
    assert "norms" in aset.group
    # A set whose statistics lack norm quantiles: position 0 only.
    stats = dict(aset.stats)
    stats[HOOKS[0]] = {k: v for k, v in stats[HOOKS[0]].items() if k != "norm_quantiles"}
    aset.group.attrs["stats"] = stats
    rule = rule_for_set(aset, HOOKS[0])
    assert rule.median_norm is None
    assert exclusion_report(aset, HOOKS[0], rule)["massive"] == 0


def test_rule_marks_tokens():
    rule = TokenRule(10.0, 2.0)
    norms = torch.tensor([1.0, 1.0, 25.0, 19.0])
    assert rule.excluded(norms, torch.arange(4)).tolist() == [True, False, True, False]
    assert TokenRule.from_json(rule.to_json()) == rule
