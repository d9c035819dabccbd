"""Time one full TopK SAE training step: saefeat's kernels against sparsify, dense torch,
and a floor, all measured in the same run on the same device.

A step is forward (encode x - b_dec, top-k, decode), FVU loss, backward and the optimiser
step including the decoder's unit-norm constraint:
- saefeat:  topk_encode + sparse_decode under bf16 autocast, SAEAdam (gradient projection,
            Adam and row renormalisation fused).
- saefeat+graph: the same step (SAEAdam capturable) captured once in a CUDA graph with a
            static input buffer after one eager step on a side stream (which autotunes and
            creates the Adam state), then replayed per step. CUDA only.
- saefeat+bf16state: saefeat with Adam's two moments stored in bf16.
- sparsify: EleutherAI's SparseCoder with its own bf16 autocast forward, then what its
            trainer does: remove_gradient_parallel_to_decoder_directions, torch.optim.Adam
            (its fallback when bitsandbytes is absent), zero_grad, set_decoder_norm_to_unit_norm.
- torch:    dense relu -> topk -> scatter -> matmul under bf16 autocast, fused Adam, the
            projection and renormalisation as torch ops.
- floor:    the bf16 encoder GEMM plus one torch.optim.Adam(fused=True) step over the same
            parameters: what any TopK step must at least do.

Every variant starts from the same weights (unit-norm decoder rows, W_enc = W_dec.T, zero
biases), so the first-step FVU column must agree to bf16 precision; every variant takes
the same number of steps on the same batch, so the last-step FVU column of saefeat and
saefeat+graph must agree too (the graph's first step is eager; the last is a replay).
Times are CUDA-event medians after warm-up (autotuning happens in warm-up); peak memory is
torch.cuda.max_memory_allocated with the stats reset before each variant. The last line
printed is one JSON object keyed by size.

    python bench/sae_step.py            # on a GPU
    python bench/sae_step.py --smoke    # tiny sizes on the CPU (reference path): crash check
    python bench/sae_step.py --profile --sizes 0 --variants saefeat,saefeat+graph
                                        # torch.profiler: the top kernels of a few steps
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from saefeat.kernels import SAEAdam, sparse_decode, topk_encode, use_triton  # noqa: E402

# (d_in, d_sae, k, batch)
SIZES = [
    (768, 24576, 32, 4096),
    (768, 24576, 32, 32768),
    (2304, 65536, 64, 4096),
    (4096, 131072, 64, 4096),
]
SMOKE_SIZES = [(48, 192, 4, 64), (40, 160, 8, 96)]

Step = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Weights:
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor
    W_dec: torch.Tensor  # [d_sae, d_in], unit rows
    b_dec: torch.Tensor

    @classmethod
    def init(cls, d_in: int, d_sae: int, device: torch.device, seed: int = 0) -> Weights:
        g = torch.Generator(device=device).manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in, device=device, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        return cls(
            W_dec.t().contiguous(),
            torch.zeros(d_sae, device=device),
            W_dec,
            torch.zeros(d_in, device=device),
        )

    def params(self) -> list[torch.Tensor]:
        """Fresh fp32 leaf copies, so variants never share storage."""
        return [
            t.clone().requires_grad_() for t in (self.W_enc, self.b_enc, self.W_dec, self.b_dec)
        ]


def learning_rate(d_sae: int) -> float:
    return 2e-4 / math.sqrt(d_sae / 2**14)  # sparsify's default for Adam


def fvu(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    e = recon.float() - x
    return e.pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def _autocast(device: torch.device, cache_enabled: bool = True):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return nullcontext()


def _saefeat_loss(
    x: torch.Tensor,
    params: list[torch.Tensor],
    k: int,
    device: torch.device,
    cache_enabled: bool = True,
) -> torch.Tensor:
    """FVU of saefeat's TopK encode + sparse decode of `x` with a variant's own `params`
    (W_enc, b_enc, W_dec, b_dec), under bf16 autocast on CUDA."""
    W_enc, b_enc, W_dec, b_dec = params
    with _autocast(device, cache_enabled):
        vals, idx = topk_encode(x - b_dec, W_enc, b_enc, k)
        recon = sparse_decode(idx, vals, W_dec, b_dec)
    return fvu(x, recon)


class Skipped(Exception):
    """A variant that does not apply here (printed with its reason, not as an error)."""


def make_saefeat(
    w: Weights, k: int, device: torch.device, state_dtype: torch.dtype = torch.float32
) -> Step:
    params = w.params()
    W_enc, W_dec = params[0], params[2]
    opt = SAEAdam(params, lr=learning_rate(W_enc.shape[1]), decoder=W_dec,
                  state_dtype=state_dtype)  # fmt: skip

    def step(x: torch.Tensor) -> torch.Tensor:
        loss = _saefeat_loss(x, params, k, device)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def make_saefeat_bf16state(w: Weights, k: int, device: torch.device) -> Step:
    return make_saefeat(w, k, device, torch.bfloat16)


def make_saefeat_graph(w: Weights, k: int, device: torch.device) -> Step:
    """The saefeat step in one CUDA graph: static input buffer, gradients and Adam state
    in place, step counts and scalars on the device (SAEAdam capturable, a tensor lr)."""
    if device.type != "cuda":
        raise Skipped("CUDA graphs need a CUDA device")
    params = w.params()
    W_enc, W_dec = params[0], params[2]
    lr = torch.tensor(learning_rate(W_enc.shape[1]), device=device)
    opt = SAEAdam(params, lr=lr, decoder=W_dec, capturable=True)

    def body(x: torch.Tensor) -> torch.Tensor:
        # No autocast weight cache: a capture must not keep casts from before it.
        loss = _saefeat_loss(x, params, k, device, cache_enabled=False)
        loss.backward()
        opt.step()
        return loss.detach()

    graph: torch.cuda.CUDAGraph | None = None
    static_x = static_loss = None

    def step(x: torch.Tensor) -> torch.Tensor:
        nonlocal graph, static_x, static_loss
        if graph is not None:
            static_x.copy_(x)
            graph.replay()
            return static_loss
        # Step 1 eagerly on a side stream (torch's recipe): Triton compiles and autotunes,
        # the Adam state is created; none of that may happen inside the capture.
        static_x = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            first = body(static_x)
            opt.zero_grad(set_to_none=True)  # backward in the capture allocates them
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = body(static_x)
        return first

    return step


def make_dense_torch(w: Weights, k: int, device: torch.device) -> Step:
    W_enc, b_enc, W_dec, b_dec = w.params()
    fused = device.type == "cuda"
    opt = torch.optim.Adam(
        [W_enc, b_enc, W_dec, b_dec], lr=learning_rate(W_enc.shape[1]), fused=fused
    )

    def step(x: torch.Tensor) -> torch.Tensor:
        with _autocast(device):
            pre = torch.relu((x - b_dec) @ W_enc + b_enc)
            vals, idx = pre.topk(k, dim=1, sorted=False)
            acts = torch.zeros_like(pre).scatter(1, idx, vals)
            recon = acts @ W_dec + b_dec
        loss = fvu(x, recon)
        loss.backward()
        with torch.no_grad():
            g = W_dec.grad
            g -= (g * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        return loss.detach()

    return step


def import_sparsify() -> tuple[type, type]:
    """SparseCoder and its config without running sparsify/__init__ when that fails.

    The package __init__ imports its trainer, which needs `datasets`; only the sparse coder
    modules are needed here.
    """
    try:
        from sparsify.sparse_coder import SparseCoder, SparseCoderConfig

        return SparseCoder, SparseCoderConfig
    except ImportError as first:
        spec = importlib.util.find_spec("sparsify")
        if spec is None or not spec.submodule_search_locations:
            raise first from None
        shell = types.ModuleType("sparsify")
        shell.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = shell
        from sparsify.sparse_coder import SparseCoder, SparseCoderConfig

        return SparseCoder, SparseCoderConfig


def make_sparsify(w: Weights, k: int, device: torch.device) -> Step:
    SparseCoder, SparseCoderConfig = import_sparsify()
    d_in, d_sae = w.W_enc.shape
    cfg = SparseCoderConfig(num_latents=d_sae, k=k)
    sae = SparseCoder(d_in, cfg, device=device, dtype=torch.float32)
    with torch.no_grad():
        sae.encoder.weight.copy_(w.W_enc.t())
        sae.encoder.bias.copy_(w.b_enc)
        sae.W_dec.copy_(w.W_dec)
        sae.b_dec.copy_(w.b_dec)
    opt = torch.optim.Adam(sae.parameters(), lr=learning_rate(d_sae))

    def step(x: torch.Tensor) -> torch.Tensor:
        sae.set_decoder_norm_to_unit_norm()  # the trainer does this before each forward
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        return out.fvu.detach()

    return step


def make_floor(w: Weights, k: int, device: torch.device) -> Step:
    params = w.params()
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.Adam(params, lr=learning_rate(w.W_enc.shape[1]), fused=device.type == "cuda")
    gemm_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    W_c = w.W_enc.to(gemm_dtype)

    def step(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pre = x.to(gemm_dtype) @ W_c
        opt.step()
        return pre[0, 0].float()

    return step


# Run in this order at each size; the graph last, so a capture that breaks the CUDA
# context cannot take the others' numbers at that size with it.
VARIANTS: dict[str, Callable[[Weights, int, torch.device], Step]] = {
    "saefeat": make_saefeat,
    "saefeat+bf16state": make_saefeat_bf16state,
    "sparsify": make_sparsify,
    "torch": make_dense_torch,
    "floor": make_floor,
    "saefeat+graph": make_saefeat_graph,
}


@dataclass
class Measured:
    ms: float | None = None
    peak_gib: float | None = None
    first_fvu: float | None = None
    last_fvu: float | None = None
    error: str | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    make: Callable, w: Weights, k: int, x: torch.Tensor, warmup: int, repeats: int
) -> Measured:
    device = x.device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        step = make(w, k, device)
        first = float(step(x))  # includes Triton autotuning / compilation
        for _ in range(max(0, warmup - 1)):
            step(x)
        _sync(device)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                step(x)
                end.record()
                times.append((start, end))
            else:
                t0 = time.perf_counter()
                step(x)
                times.append((time.perf_counter() - t0) * 1e3)
        last = float(step(x))
        _sync(device)
        if device.type == "cuda":
            ms = [s.elapsed_time(e) for s, e in times]
            peak = torch.cuda.max_memory_allocated(device) / 2**30
        else:
            ms, peak = times, None
        return Measured(statistics.median(ms), peak, first, last)
    except Skipped as why:
        return Measured(error=f"skipped: {why}")
    except ImportError as err:
        return Measured(error=f"not importable: {err}")
    except Exception as err:  # an OOM or a failing variant must not stop the others
        return Measured(error=f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")
    finally:
        step = None  # noqa: F841 - drop the variant's tensors before the next one
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _cuda_median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def measure_selection(
    d_sae: int, k: int, batch: int, device: torch.device, warmup: int, repeats: int
) -> tuple[float, float]:
    """Row top-k of bf16 relu'd pre-activations: torch.topk vs the block-pruned radix select
    (given the block maxima the encoder GEMM's epilogue writes alongside)."""
    from saefeat.kernels import gemm, topk

    g = torch.Generator(device=device).manual_seed(2)
    pre = torch.randn(batch, d_sae, device=device, generator=g).relu_().bfloat16()
    sel = gemm.SEL_BLOCK
    nb = -(-d_sae // sel)
    padded = torch.nn.functional.pad(pre.float(), (0, nb * sel - d_sae))
    bmax = padded.view(batch, nb, sel).amax(2)
    t_torch = _cuda_median_ms(lambda: torch.topk(pre, k, dim=1, sorted=False), warmup, repeats)
    t_ours = _cuda_median_ms(lambda: topk.select_topk(pre, bmax, k, torch.float32), warmup, repeats)
    return t_torch, t_ours


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _summary(res: dict[str, Measured]) -> dict[str, float | None]:
    none = Measured()
    s, sp, fl = (res.get(n, none).ms for n in ("saefeat", "sparsify", "floor"))
    out = {
        "saefeat_ms": s,
        "sparsify_ms": sp,
        "torch_ms": res.get("torch", none).ms,
        "floor_ms": fl,
        "speedup_vs_sparsify": sp / s if s and sp else None,
        "ratio_to_floor": s / fl if s and fl else None,
        "peak_gib_saefeat": res.get("saefeat", none).peak_gib,
        "peak_gib_sparsify": res.get("sparsify", none).peak_gib,
    }
    for name in ("saefeat+graph", "saefeat+bf16state"):  # the same keys, suffixed
        m, tag = res.get(name, none), name.split("+")[1]
        out |= {
            f"{tag}_ms": m.ms,
            f"speedup_vs_sparsify_{tag}": sp / m.ms if m.ms and sp else None,
            f"ratio_to_floor_{tag}": m.ms / fl if m.ms and fl else None,
            f"peak_gib_{tag}": m.peak_gib,
        }
    return out


def _device_ms(evt) -> float:
    """An event's self time on the device in ms (the attribute's name moved in torch 2.4)."""
    us = getattr(evt, "self_device_time_total", None)
    if us is None:
        us = getattr(evt, "self_cuda_time_total", 0.0)
    return us / 1e3


def profile_variant(
    make: Callable, w: Weights, k: int, x: torch.Tensor, steps: int, top: int
) -> dict:
    """torch.profiler over `steps` steps after 3 warm-up steps: wall time per step, device
    busy time per step, kernel launches per step and the top kernels by self device time
    (on the CPU: the top ops by self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    device = x.device
    cuda = device.type == "cuda"
    step = make(w, k, device)
    for _ in range(3):
        step(x)
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(x)
        _sync(device)
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    events = prof.key_averages()
    if cuda:
        timed_events = [e for e in events if _device_ms(e) > 0]
        # Kernels are the device-side events; CPU ops carry their kernels' time too.
        kernels = [e for e in timed_events if getattr(e.device_type, "name", "") == "CUDA"]
        kernels = sorted(kernels or timed_events, key=_device_ms, reverse=True)
        timed = [(e.key, _device_ms(e) / steps, e.count / steps) for e in kernels]
    else:
        ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        timed = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in ops]
    busy = sum(ms for _, ms, _ in timed)
    # Host-side launch calls (runtime or driver API; a graph replay is one launch).
    host_launches = sum(e.count for e in events if "Launch" in e.key) / steps
    return {
        "wall_ms": wall_ms,
        "busy_ms": busy,
        "kernels": sum(n for _, _, n in timed) if cuda else None,
        "launches": host_launches if cuda else None,
        "top": [[name[:200], ms, n] for name, ms, n in timed[:top]],
    }


def print_profile(label: str, name: str, p: dict) -> None:
    where = "device" if p["kernels"] is not None else "CPU"
    counts = ""
    if p["kernels"] is not None:
        counts = f", {p['kernels']:.0f} kernels and {p['launches']:.0f} host launch calls"
    print(f"\n## {label} {name}: {p['wall_ms']:.3f} ms/step wall, {p['busy_ms']:.3f} ms/step "
          f"{where} busy{counts} per step (wall - busy: launch and host gaps)")  # fmt: skip
    print(f"{'self ' + where + ' ms/step':>22}{'%':>7}{'calls/step':>12}  name")
    for kname, ms, n in p["top"]:
        share = 100 * ms / p["busy_ms"] if p["busy_ms"] else 0.0
        print(f"{ms:>22.4f}{share:>7.1f}{n:>12.1f}  {kname[:90]}")


def _case(
    d_in: int, d_sae: int, k: int, batch: int, device: torch.device
) -> tuple[str, Weights, torch.Tensor]:
    """One size's label, fresh weights and input batch (the same for every variant)."""
    x = torch.randn(
        batch, d_in, device=device, generator=torch.Generator(device=device).manual_seed(1)
    )
    return f"{d_in}x{d_sae}x{k}@{batch}", Weights.init(d_in, d_sae, device), x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of {','.join(VARIANTS)} (default: all; with --profile: "
        "saefeat)",
    )
    ap.add_argument(
        "--sizes",
        default=None,
        help="comma-separated indices into the size list (default: all; with --profile: 0)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing: torch.profiler's top kernels per variant (default saefeat)",
    )
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--profile-top", type=int, default=15)
    args = ap.parse_args(argv)

    if args.smoke:
        device = torch.device("cpu")
        sizes = SMOKE_SIZES
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its decoder kernel is CUDA-only
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device; use --smoke for the CPU check")
        device = torch.device("cuda")
        sizes = SIZES
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    repeats = args.repeats if args.repeats is not None else (2 if args.smoke else 10)
    default = "saefeat" if args.profile else ",".join(VARIANTS)
    names = [v for v in (args.variants or default).split(",") if v]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        ap.error(f"--variants: unknown {sorted(unknown)}; allowed {list(VARIANTS)}")
    try:
        picked = [int(i) for i in (args.sizes or ("0" if args.profile else "")).split(",") if i]
        sizes = [sizes[i] for i in picked] if picked else sizes
    except (ValueError, IndexError):
        ap.error(f"--sizes: comma-separated indices below {len(sizes)}, got {args.sizes!r}")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    backend = "triton" if use_triton(torch.empty(0, device=device)) else "torch reference"
    if args.profile:
        return run_profiles(names, sizes, device, where, backend, args)
    print(
        f"# SAE TopK training step on {where}, torch {torch.__version__}, saefeat kernels: "
        f"{backend}, median of {repeats} after {warmup} warm-up"
    )
    header = (
        f"{'size (d_in x d_sae x k @ B)':<30}{'variant':<19}{'ms/step':>10}"
        f"{'tokens/s':>13}{'peak GiB':>10}{'fvu@1':>9}{'fvu@last':>10}"
    )
    print(header)
    summary: dict[str, dict] = {}
    for d_in, d_sae, k, batch in sizes:
        label, w, x = _case(d_in, d_sae, k, batch, device)
        res = {name: measure(VARIANTS[name], w, k, x, warmup, repeats) for name in names}
        for name, m in res.items():
            if m.error:
                print(f"{label:<30}{name:<19}  {m.error}")
                continue
            tps = batch / (m.ms / 1e3)
            print(
                f"{label:<30}{name:<19}{m.ms:>10.3f}{tps:>13.3e}"
                f"{_fmt(m.peak_gib, '.2f'):>10}{_fmt(m.first_fvu, '.4f'):>9}"
                f"{_fmt(m.last_fvu, '.4f'):>10}"
            )
        del w, x

        summary[label] = _summary(res)
        if device.type == "cuda" and "saefeat" in names:
            try:
                t_torch, t_ours = measure_selection(d_sae, k, batch, device, warmup, repeats)
                summary[label].update(select_torch_ms=t_torch, select_saefeat_ms=t_ours)
                print(
                    f"{label:<30}{'select':<19}  torch.topk {t_torch:.3f} ms, "
                    f"saefeat {t_ours:.3f} ms ({t_torch / t_ours:.1f}x)"
                )
            except Exception as err:
                print(f"{label:<30}{'select':<19}  {type(err).__name__}: {err}")
    print(json.dumps(summary))
    return 0


def run_profiles(names, sizes, device, where, backend, args) -> int:
    print(f"# SAE TopK step profile on {where}, torch {torch.__version__}, saefeat kernels: "
          f"{backend}, {args.profile_steps} profiled steps after 3 warm-up")  # fmt: skip
    out: dict[str, dict] = {}
    for d_in, d_sae, k, batch in sizes:
        label, w, x = _case(d_in, d_sae, k, batch, device)
        for name in names:
            try:
                p = profile_variant(VARIANTS[name], w, k, x, args.profile_steps, args.profile_top)
            except Skipped as why:
                print(f"\n## {label} {name}: skipped: {why}")
                continue
            except Exception as err:
                print(f"\n## {label} {name}: {type(err).__name__}: {str(err).splitlines()[0]}")
                continue
            finally:
                gc.collect()
            print_profile(label, name, p)
            kept = ("wall_ms", "busy_ms", "kernels", "launches")
            out.setdefault(label, {})[name] = {key: p[key] for key in kept}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
