"""Backend selection and the test harness itself."""

from __future__ import annotations

import pytest
import torch

from saefeat.kernels import compute_dtype, dispatch, reference, use_triton


def test_invalid_backend_names_the_choices(monkeypatch) -> None:
    monkeypatch.setenv("SAEFEAT_KERNELS", "cuda")
    with pytest.raises(ValueError, match="auto, triton, torch"):
        use_triton(torch.zeros(1))


def test_torch_and_auto_on_cpu_use_the_reference(monkeypatch) -> None:
    for mode in ("torch", "auto", ""):
        monkeypatch.setenv("SAEFEAT_KERNELS", mode)
        assert not use_triton(torch.zeros(1))
        assert dispatch.ops_for(torch.zeros(1)) is reference


def test_forced_triton_on_cpu_needs_the_interpreter(triton_backend: str, monkeypatch) -> None:
    if not dispatch.interpreting():
        pytest.skip("a GPU run (SAEFEAT_TEST_DEVICE=cuda) has no interpreter to take away")
    assert use_triton(torch.zeros(1))
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        use_triton(torch.zeros(1))


def test_compute_dtype_follows_autocast() -> None:
    x = torch.zeros(2, 3)
    assert compute_dtype(x, torch.zeros(3, 4)) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(x, torch.zeros(3, 4)) == torch.bfloat16


def test_allocations_are_poisoned() -> None:
    """The conftest fixture this suite relies on to catch unwritten outputs."""
    assert torch.empty(4).isnan().all()
    assert (torch.empty(4, dtype=torch.int64) == -1).all()
    assert torch.empty_like(torch.zeros(2, 2)).isnan().all()


def test_segments_cache_tells_tensors_apart() -> None:
    from saefeat.kernels.segments import segments_by_latent

    a = torch.tensor([[3, 1], [0, 3]])
    b = torch.tensor([[2, 2], [1, 0]])
    sa = segments_by_latent(a, 4)
    assert segments_by_latent(a, 4) is sa
    sb = segments_by_latent(b, 4)
    assert sb is not sa and sb.starts.tolist() == [0, 1, 2, 4, 4]
    a[0, 0] = 2  # in-place change bumps the version: no stale hit
    assert segments_by_latent(a, 4).starts.tolist() == [0, 1, 2, 3, 4]
