"""Every Triton kernel compiles for a real GPU (sm_90), not just under the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_testlib import DEVICE

from saefeat.kernels import dispatch

SCRIPT = Path(__file__).with_name("gpu_compile.py")


@pytest.mark.skipif(not dispatch.triton_available(), reason="triton is not installed")
@pytest.mark.skipif(DEVICE.type == "cuda", reason="on a GPU the other tests compile for real")
def test_every_kernel_compiles_for_hopper() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "90"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "_select_kernel" in done.stdout
