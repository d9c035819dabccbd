import numpy as np
import pytest
import torch

from saefeat.errors import CorruptDataError, NotFoundError, SpecError
from saefeat.storage.activations import ActivationSet, decode_rows, encode_rows
from saefeat.storage.reader import ShuffledBatchReader
from saefeat.storage.stats import hook_statistics

HOOK = "blocks.0.hook_resid_post"


def make_set(tmp_path, n_contexts=10, ctx_len=8, d=6, cps=3, dtype="bfloat16"):
    tokens = np.arange(n_contexts * ctx_len, dtype=np.int32).reshape(n_contexts, ctx_len)
    return ActivationSet.create(
        tmp_path / "s.zarr", set_id="s", spec={}, model="m", hooks=[HOOK], d_model=d,
        tokens=tokens, doc_index=np.zeros(n_contexts), doc_offset=np.zeros(n_contexts),
        doc_ids=["d"], contexts_per_shard=cps, storage_dtype=dtype,
    )  # fmt: skip


def fill(aset, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = {}
    for s in range(aset.n_shards):
        r0, r1 = aset.shard_rows(s)
        # Row r holds r in its first column, so a reader's output names its rows.
        x = torch.randn(r1 - r0, aset.d_model, generator=g)
        x[:, 0] = torch.arange(r0, r1, dtype=torch.float32)
        aset.write_shard(s, {HOOK: x})
        data[s] = x
    return data


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_roundtrip_each_dtype(tmp_path, dtype):
    aset = make_set(tmp_path, dtype=dtype)
    data = fill(aset)
    for s, x in data.items():
        got = aset.read_shard(s, HOOK, verify=True)
        want = decode_rows(encode_rows(x, dtype), dtype)
        torch.testing.assert_close(got, want)
    stored = {"bfloat16": "uint16"}.get(dtype, dtype)
    assert aset.acts_array(HOOK).dtype == np.dtype(stored)


def test_uncommitted_shards_are_invisible(tmp_path):
    aset = make_set(tmp_path)
    assert aset.n_shards == 4 and aset.committed_shards() == []
    r0, r1 = aset.shard_rows(1)
    aset.write_shard(1, {HOOK: torch.ones(r1 - r0, 6)})
    assert aset.committed_shards() == [1]
    with pytest.raises(NotFoundError):
        aset.read_shard(0, HOOK)
    with pytest.raises(RuntimeError, match="not committed"):
        aset.mark_complete({})


def test_checksum_catches_flipped_bytes(tmp_path):
    aset = make_set(tmp_path)
    fill(aset)
    shard_file = aset.path / "acts" / HOOK / "c" / "2" / "0"
    raw = bytearray(shard_file.read_bytes())
    raw[10] ^= 0xFF
    shard_file.write_bytes(bytes(raw))
    assert aset.verify() == [2]
    with pytest.raises(CorruptDataError, match="shard 2"):
        aset.read_shard(2, HOOK, verify=True)


def test_torn_commit_record_counts_as_uncommitted(tmp_path):
    aset = make_set(tmp_path)
    fill(aset)
    (aset.path / "commits" / "shard-000001.json").write_text('{"shard": 1, "ro')
    assert aset.uncommitted_shards() == [1]


def test_bad_storage_dtype(tmp_path):
    with pytest.raises(SpecError, match="storage dtype"):
        make_set(tmp_path, dtype="int8")


def test_statistics_match_numpy(tmp_path):
    aset = make_set(tmp_path, dtype="float32")
    data = fill(aset)
    st = hook_statistics(aset, HOOK)
    x = torch.cat([data[s] for s in range(aset.n_shards)]).numpy()
    x = x[np.arange(len(x)) % aset.ctx_len != 0]
    np.testing.assert_allclose(st["mean"], x.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st["var"], x.var(0), rtol=1e-3)
    scaled = x * st["scale"]
    assert abs((scaled**2).sum(1).mean() - 1) < 1e-4
    assert st["n_rows"] == len(x)


def test_reader_serves_every_row_once_per_epoch(tmp_path):
    aset = make_set(tmp_path, dtype="float32")
    fill(aset)
    r = ShuffledBatchReader(aset, HOOK, batch_size=7, seed=3, window_shards=2)
    rows = torch.cat(list(r.iter_epoch(0)))[:, 0].long()
    want = [i for i in range(aset.n_tokens) if i % aset.ctx_len != 0]
    assert sorted(rows.tolist()) == want
    assert rows.tolist() != want  # shuffled
    assert len(list(r.iter_epoch(0))) == r.batches_per_epoch


def test_reader_is_deterministic_and_resumable(tmp_path):
    aset = make_set(tmp_path, dtype="float32")
    fill(aset)
    a = [b[:, 0] for b in ShuffledBatchReader(aset, HOOK, 5, seed=1).iter_epoch(1)]
    b = [b[:, 0] for b in ShuffledBatchReader(aset, HOOK, 5, seed=1).iter_epoch(1)]
    c = [b[:, 0] for b in ShuffledBatchReader(aset, HOOK, 5, seed=2).iter_epoch(1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    resumed = [b[:, 0] for b in ShuffledBatchReader(aset, HOOK, 5, seed=1).iter_epoch(1, 7)]
    assert all(torch.equal(x, y) for x, y in zip(a[7:], resumed, strict=True))
    assert len(resumed) == len(a) - 7


def test_all_zero_shard_of_a_reopened_set_is_written(tmp_path):
    """An all-zero shard is data: a reopened set (as every harvest worker opens it) writes
    its file like any other, so the committed shard is on disk."""
    aset = ActivationSet(make_set(tmp_path).path)
    r0, r1 = aset.shard_rows(1)
    aset.write_shard(1, {HOOK: torch.zeros(r1 - r0, aset.d_model)})
    assert (aset.path / "acts" / HOOK / "c" / "1" / "0").is_file()
    assert not aset.read_shard(1, HOOK, verify=True).any()
