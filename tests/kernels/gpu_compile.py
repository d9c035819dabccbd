"""Compile every Triton kernel for a GPU on a machine that has none.

The interpreter (TRITON_INTERPRET=1), which the kernel tests use, accepts code the real
compiler refuses (a constexpr reassigned in a static_range loop got through it and broke
every top-k on the first H100). This script drives the public ops on CPU tensors with
triton's driver replaced by one that only compiles: every launch compiles its kernel for
the target (frontend, LLVM and triton's bundled ptxas) and runs nothing. Every autotune
config is compiled. Outputs stay zero, so the numbers mean nothing; the compile is the
test.

    python tests/kernels/gpu_compile.py [--arch 90]

Prints one line per compiled kernel variant and exits non-zero if any failed or if a
kernel of saefeat.kernels was never reached. Must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the interpreter is what this checks past")

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

COMPILED: Counter[str] = Counter()


class CompileOnlyDriver:
    """What JITFunction.run asks of a driver before it launches, for a chosen target."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def is_active(self) -> bool:
        return True


_jit_run = JITFunction.run


def _compile_only(self, *args, grid, warmup, **kwargs):
    kernel = _jit_run(self, *args, grid=grid, warmup=True, **kwargs)
    COMPILED[self.__name__] += 1
    return kernel


def _every_config(self, *args, **kwargs):
    for config in self.configs:
        self.fn.run(*args, **{**kwargs, **config.all_kwargs()})


def _zeroed(alloc):
    # Nothing is launched, so outputs keep what they were allocated with: zeros keep the
    # torch glue between kernels (index sorts, gathers) on valid indices.
    return lambda *a, **k: alloc(*a, **k).zero_()


def install(arch: int) -> None:
    driver.set_active(CompileOnlyDriver(arch))
    JITFunction.run = _compile_only
    Autotuner.run = _every_config
    torch.empty, torch.empty_like = _zeroed(torch.empty), _zeroed(torch.empty_like)

    from saefeat.kernels import dispatch

    os.environ[dispatch.ENV_VAR] = "triton"  # not the CPU production path
    dispatch.use_triton = lambda *tensors: True  # CPU tensors, compiled kernels


def _problem(B: int, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = {
        "x": torch.randn(B, d_in, generator=g),
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    return {k: v.requires_grad_() for k, v in t.items()}


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def no_host_reads():
    """Tensor methods that read values on the host (a sync on a GPU) raise inside."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise RuntimeError(f"host read in a step meant for a CUDA graph: Tensor.{name}")

        return method

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def probes() -> dict[str, Callable[[], None]]:
    from saefeat.kernels import (
        SAEAdam,
        adam,
        auxk_loss,
        batch_topk_encode,
        jumprelu_encode,
        sparse_decode,
        topk_encode,
    )

    def encode_decode(encode, dtype):
        def run():
            t = _problem(64, 96, 1000)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                vals, idx = encode(t["x"], t["W_enc"], t["b_enc"], 8)
                out = sparse_decode(idx, vals, t["W_dec"], t["b_dec"])
            out.float().sum().backward()

        return run

    def jumprelu():
        t = _problem(64, 96, 1000)
        threshold = torch.rand(1000).requires_grad_()
        acts, l0 = jumprelu_encode(t["x"], t["W_enc"], t["b_enc"], threshold, 0.1, return_l0=True)
        (acts.sum() + l0.sum()).backward()

    def decode_bf16_int32():
        t = _problem(16, 96, 500)
        idx = torch.randint(0, 500, (16, 8), dtype=torch.int32)
        vals = torch.rand(16, 8).requires_grad_()
        w16 = t["W_dec"].detach().bfloat16().requires_grad_()
        sparse_decode(idx, vals, w16, None).sum().backward()

    def auxk():
        t = _problem(64, 96, 1000)
        dead = torch.arange(1000) % 3 == 0
        residual = torch.randn(64, 96)
        loss = auxk_loss(t["x"], residual, t["W_enc"], t["b_enc"], t["W_dec"], dead, 16)
        loss.backward()

    def optimizer(row_limit: int | None, **options):
        def run():
            limit = adam.MAX_REGISTER_ROW
            if row_limit is not None:
                adam.MAX_REGISTER_ROW = row_limit  # the chunked decoder-row loop
            try:
                t = _problem(8, 96, 300)
                params = [t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]]
                opt = SAEAdam(params, lr=1e-3, decoder=t["W_dec"], **options)
                for p in params:
                    p.grad = torch.randn_like(p)
                opt.step()
            finally:
                adam.MAX_REGISTER_ROW = limit

        return run

    def graph_step():
        """The TopK step as bench/sae_step.py's saefeat+graph captures it (SAEAdam
        capturable, a tensor lr), its second call with every host read of a tensor
        refused: a CUDA graph cannot hold one (the first call creates the Adam state)."""
        t = _problem(64, 96, 1000)
        params = [t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]]
        opt = SAEAdam(params, lr=torch.tensor(1e-3), decoder=t["W_dec"], capturable=True)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                vals, idx = topk_encode(t["x"] - t["b_dec"], t["W_enc"], t["b_enc"], 8)
                out = sparse_decode(idx, vals, t["W_dec"], t["b_dec"])
            out.float().pow(2).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        with no_host_reads():
            step()

    return {
        "topk fp32": encode_decode(topk_encode, torch.float32),
        "topk bf16": encode_decode(topk_encode, torch.bfloat16),
        "batch topk bf16": encode_decode(batch_topk_encode, torch.bfloat16),
        "jumprelu": jumprelu,
        "decode bf16 weights, int32 ids": decode_bf16_int32,
        "auxk": auxk,
        "SAEAdam": optimizer(None),
        "SAEAdam chunked rows": optimizer(16),
        "SAEAdam bf16 state": optimizer(None, state_dtype=torch.bfloat16),
        "SAEAdam bf16 state, chunked rows": optimizer(16, state_dtype=torch.bfloat16),
        "SAEAdam capturable, bf16 state": optimizer(
            None, state_dtype=torch.bfloat16, capturable=True
        ),
        "TopK step for a CUDA graph, no host reads": graph_step,
    }


def kernel_names() -> set[str]:
    """Every launched kernel of saefeat.kernels (jit functions named _*_kernel)."""
    import importlib
    import pkgutil

    import saefeat.kernels as package

    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"saefeat.kernels.{info.name}")
        for name, value in vars(module).items():
            if name.endswith("_kernel") and isinstance(value, JITFunction | Autotuner):
                names.add(name)
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    arch = ap.parse_args().arch
    install(arch)
    failed = []
    for name, run in probes().items():
        before = sum(COMPILED.values())
        try:
            run()
            print(f"ok    {name}: {sum(COMPILED.values()) - before} compiles")
        except Exception:  # report every failing probe, not just the first
            failed.append(name)
            print(f"FAIL  {name}\n{traceback.format_exc(limit=-3)}")
    missing = kernel_names() - set(COMPILED)
    if missing:
        print(f"FAIL  never compiled: {sorted(missing)}")
    print(f"sm_{arch}: {dict(sorted(COMPILED.items()))}")
    return 1 if failed or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
