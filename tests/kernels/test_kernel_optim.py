"""SAEAdam against float64 references: torch.optim.Adam, and the decoder's three-step recipe."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, assert_close64, dev

from saefeat.kernels import SAEAdam

LR, BETAS, EPS = 3e-2, (0.9, 0.99), 1e-8


def _grads(seed: int, steps: int, shapes: list[tuple[int, ...]]) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[dev(torch.randn(s, generator=g)) for s in shapes] for _ in range(steps)]


def _decoder_reference64(w: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Project out the row-parallel gradient, Adam, renormalise rows (sparsify's order)."""
    w = w.double().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for step, g in enumerate(grads, start=1):
        g = g.double()
        g = g - ((g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)) * w
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        denom = (v / (1 - BETAS[1] ** step)).sqrt() + EPS
        w = w - LR / (1 - BETAS[0] ** step) * m / denom
        w = w / w.norm(dim=1, keepdim=True)
    return w


@pytest.mark.parametrize("register_row", [True, False], ids=["registers", "chunked"])
def test_sae_adam_matches_references(backend: str, register_row: bool, monkeypatch) -> None:
    if not register_row:
        if backend != "triton":
            pytest.skip("the chunked row loop exists only in the kernel")
        from saefeat.kernels import adam

        monkeypatch.setattr(adam, "MAX_REGISTER_ROW", 16)
    shapes = [(37, 29), (29, 37), (29,), (37,)]  # W_enc, W_dec, b_enc, b_dec
    gen = torch.Generator().manual_seed(0)
    init = [dev(torch.randn(s, generator=gen)) for s in shapes]
    init[1] /= init[1].norm(dim=1, keepdim=True)
    # W_enc stored transposed (column-major), as an SAE may keep it.
    params = [init[0].t().contiguous().t().requires_grad_()]
    params += [p.clone().requires_grad_() for p in init[1:]]
    steps = _grads(1, 3, shapes)
    opt = SAEAdam(params, lr=LR, betas=BETAS, eps=EPS, decoder=params[1])
    for gs in steps:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, gs, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=0, atol=0)  # gradients untouched

    plain = [init[i].double().clone().requires_grad_() for i in (0, 2, 3)]
    ref = torch.optim.Adam(plain, lr=LR, betas=BETAS, eps=EPS)
    for gs in steps:
        for p, g in zip(plain, [gs[0], gs[2], gs[3]], strict=True):
            p.grad = g.double()
        ref.step()
    for got, want in zip([params[0], params[2], params[3]], plain, strict=True):
        assert_close64(got.detach(), want.detach(), rtol=1e-5)
    w64 = _decoder_reference64(init[1], [gs[1] for gs in steps])
    assert_close64(params[1].detach(), w64, rtol=1e-5)
    torch.testing.assert_close(params[1].detach().norm(dim=1), torch.ones(29, device=DEVICE))


def test_sae_adam_decoder_must_be_a_param() -> None:
    p = torch.zeros(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="decoder"):
        SAEAdam([p], decoder=torch.zeros(3, 4))


def test_sae_adam_state_dict_round_trip(backend: str) -> None:
    w = dev(torch.randn(5, 7)).requires_grad_()
    opt = SAEAdam([w], lr=1e-2, decoder=w)
    w.grad = dev(torch.randn(5, 7))
    opt.step()
    state = opt.state_dict()
    opt2 = SAEAdam([w], lr=1e-2, decoder=w)
    opt2.load_state_dict(state)
    assert float(opt2.state[w]["step"]) == 1.0
    opt2.step()


# ---- bf16 moments and the capturable step -------------------------------------------


def _train(params: list[torch.Tensor], steps: list[list[torch.Tensor]], **options) -> SAEAdam:
    opt = SAEAdam(params, lr=LR, betas=BETAS, eps=EPS, decoder=params[1], **options)
    for gs in steps:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    return opt


def _problem_params(shapes) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    init = [dev(torch.randn(s, generator=gen)) for s in shapes]
    init[1] /= init[1].norm(dim=1, keepdim=True)
    return [p.requires_grad_() for p in init]


def _moments64(init: torch.Tensor, grads: list[torch.Tensor], decoder: bool):
    """Float64 Adam moments after `grads` (the decoder's gradient projected first)."""
    w = init.double().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for step, g in enumerate(grads, start=1):
        g = g.double()
        if decoder:
            g = g - ((g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)) * w
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        w = w - LR / (1 - BETAS[0] ** step) * m / ((v / (1 - BETAS[1] ** step)).sqrt() + EPS)
        if decoder:
            w = w / w.norm(dim=1, keepdim=True)
    return w, m, v


def test_bf16_state_against_float64(backend: str) -> None:
    """bf16 moments: each stored moment within a bf16 step of the float64 one, and the
    weights (whose update reads the fp32 moments before rounding) close to float64's."""
    shapes = [(37, 29), (29, 37), (29,), (37,)]  # W_enc, W_dec, b_enc, b_dec
    params = _problem_params(shapes)
    init = [p.detach().clone() for p in params]
    steps = _grads(1, 3, shapes)
    opt = _train(params, steps, state_dtype=torch.bfloat16)
    for i, p in enumerate(params):
        w64, m64, v64 = _moments64(init[i], [gs[i] for gs in steps], decoder=i == 1)
        state = opt.state[p]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
        # A stochastically rounded value is one of the two bf16 neighbours: within 2^-7
        # relative (plus what the earlier steps' rounding carried along).
        assert_close64(state["exp_avg"], m64, rtol=2e-2)
        assert_close64(state["exp_avg_sq"], v64, rtol=2e-2)
        assert_close64(p.detach(), w64, rtol=2e-3)
    torch.testing.assert_close(params[1].detach().norm(dim=1), torch.ones(29, device=DEVICE))


def test_bf16_state_takes_half_the_memory(backend: str) -> None:
    """Fails if the moments are silently kept (or brought back) in fp32."""
    shapes = [(37, 29), (29, 37), (29,), (37,)]
    params = _problem_params(shapes)
    opt = _train(params, _grads(1, 1, shapes), state_dtype=torch.bfloat16)
    n = sum(p.numel() for p in params)

    def state_bytes(o: SAEAdam) -> int:
        return sum(t.nbytes for s in o.state.values() for k, t in s.items() if k != "step")

    assert state_bytes(opt) == 2 * 2 * n
    again = SAEAdam(params, lr=LR, decoder=params[1], state_dtype=torch.bfloat16)
    again.load_state_dict(opt.state_dict())  # torch casts loaded moments to fp32 ...
    assert state_bytes(again) == 2 * 2 * n  # ... and SAEAdam casts them back
    for p in params:
        assert torch.equal(again.state[p]["exp_avg"], opt.state[p]["exp_avg"])
    fp32 = _train(_problem_params(shapes), _grads(1, 1, shapes))
    assert state_bytes(fp32) == 2 * 4 * n


def test_stochastic_rounding_keeps_the_second_moment_decaying(backend: str) -> None:
    """With g = 0, v decays by beta2 per step. Round-to-nearest bf16 never moves v (0.999 v
    rounds back to v); stochastic rounding follows the decay on average."""
    beta2, n_steps = 0.999, 60
    v_rtn = torch.ones(4096, dtype=torch.bfloat16)
    for _ in range(n_steps):
        v_rtn = (v_rtn.float() * beta2).bfloat16()
    assert torch.all(v_rtn == 1.0)  # why the state is rounded stochastically

    p = dev(torch.zeros(4096)).requires_grad_()
    opt = SAEAdam([p], lr=0.0, betas=(0.9, beta2), state_dtype=torch.bfloat16)
    p.grad = torch.zeros_like(p)
    opt.step()
    opt.state[p]["exp_avg_sq"].fill_(1.0)
    for _ in range(n_steps):
        opt.step()
    mean = float(opt.state[p]["exp_avg_sq"].float().mean())
    assert abs(mean - beta2**n_steps) < 2e-3, (mean, beta2**n_steps)


def test_kernel_and_reference_round_with_the_same_bits(triton_backend: str, monkeypatch) -> None:
    """The random bits are a hash of (element, step, salt) in both implementations, so
    contiguous tensors get the same bf16 moments (up to the rare fp32 ulp that moves a
    value across its random threshold)."""
    shapes = [(37, 29), (29, 37), (29,), (37,)]
    steps = _grads(1, 2, shapes)
    kernel = _train(params_k := _problem_params(shapes), steps, state_dtype=torch.bfloat16)
    monkeypatch.setenv("SAEFEAT_KERNELS", "torch")
    ref = _train(params_r := _problem_params(shapes), steps, state_dtype=torch.bfloat16)
    for pk, pr in zip(params_k, params_r, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = kernel.state[pk][key].float(), ref.state[pr][key].float()
            assert (a != b).float().mean() < 0.01, key
            torch.testing.assert_close(a, b, rtol=2**-7, atol=1e-30)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_capturable_step_matches_the_host_one(backend: str, state_dtype) -> None:
    """capturable=True (step counts on the device, scalars read from a device tensor, a
    tensor lr) gives the same weights and moments as the host-scalar step."""
    shapes = [(37, 29), (29, 37), (29,), (37,)]
    steps = _grads(1, 3, shapes)
    host = _train(params_h := _problem_params(shapes), steps, state_dtype=state_dtype)
    params_c = _problem_params(shapes)
    opt = SAEAdam(params_c, lr=dev(torch.tensor(LR)), betas=BETAS, eps=EPS, decoder=params_c[1],
                  state_dtype=state_dtype, capturable=True)  # fmt: skip
    for gs in steps:
        for p, g in zip(params_c, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    for ph, pc in zip(params_h, params_c, strict=True):
        assert opt.state[pc]["step"].device == pc.device
        assert float(opt.state[pc]["step"]) == 3.0
        torch.testing.assert_close(pc.detach(), ph.detach(), rtol=1e-6, atol=1e-7)
        # The step size goes through fp32 on the device: the decoder's next projection
        # (hence its moments) moves by an ulp; a bf16 moment may then round the other way.
        rtol = 1e-4 if state_dtype == torch.float32 else 2**-7
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[pc][key], host.state[ph][key], rtol=rtol,
                                       atol=1e-7)  # fmt: skip
    resumed = SAEAdam(params_h, lr=LR, decoder=params_h[1], state_dtype=state_dtype,
                      capturable=True)  # fmt: skip
    resumed.load_state_dict(host.state_dict())
    assert resumed.state[params_h[0]]["step"].device == params_h[0].device


def test_state_dtype_must_be_fp32_or_bf16() -> None:
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="state_dtype"):
        SAEAdam([p], state_dtype=torch.float16)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the fused CPU path")
def test_bf16_state_on_the_fused_cpu_path(monkeypatch) -> None:
    """SAEFEAT_KERNELS=auto on the CPU (torch's fused Adam through fp32 copies) keeps bf16
    moments and lands where the reference does."""
    shapes = [(37, 29), (29, 37), (29,), (37,)]
    steps = _grads(1, 3, shapes)
    monkeypatch.setenv("SAEFEAT_KERNELS", "auto")
    fused = _train(params_f := _problem_params(shapes), steps, state_dtype=torch.bfloat16)
    monkeypatch.setenv("SAEFEAT_KERNELS", "torch")
    ref = _train(params_r := _problem_params(shapes), steps, state_dtype=torch.bfloat16)
    for pf, pr in zip(params_f, params_r, strict=True):
        torch.testing.assert_close(pf.detach(), pr.detach(), rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq"):
            assert fused.state[pf][key].dtype == torch.bfloat16
            torch.testing.assert_close(fused.state[pf][key], ref.state[pr][key], rtol=2**-7,
                                       atol=1e-30)  # fmt: skip
