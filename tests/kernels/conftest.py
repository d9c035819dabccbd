"""Kernel tests run the Triton kernels on the CPU through the Triton interpreter, or
compiled on a GPU with SAEFEAT_TEST_DEVICE=cuda (see kernel_testlib.DEVICE).

TRITON_INTERPRET must be set before triton is first imported, hence at conftest import.
Every test runs with fresh allocations poisoned: float tensors from torch.empty* are NaN
and integer ones -1, so an output element a kernel forgot to write cannot pass.
"""

from __future__ import annotations

import os

from kernel_testlib import DEVICE  # imports torch only, not triton

if DEVICE.type == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from saefeat.kernels import dispatch, segments  # noqa: E402

BACKENDS = ["torch", "triton"]


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype != torch.bool:
        t.fill_(-1)
    return t


@pytest.fixture(autouse=True)
def poisoned_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    empty, empty_like, empty_strided = torch.empty, torch.empty_like, torch.empty_strided
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(empty_like(*a, **k)))
    monkeypatch.setattr(torch, "empty_strided", lambda *a, **k: _poison(empty_strided(*a, **k)))
    segments.clear_cache()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on the torch reference and once on the (interpreted) kernels."""
    if request.param == "triton" and not dispatch.triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv(dispatch.ENV_VAR, request.param)
    return request.param


@pytest.fixture
def triton_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    if not dispatch.triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    return "triton"
