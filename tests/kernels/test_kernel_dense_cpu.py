"""The CPU production path (dense autograd, fused CPU Adam) agrees with the sparse reference."""

import pytest
import torch

from saefeat.kernels import SAEAdam, batch_topk_encode, sparse_decode, topk_encode


def _step(backend, monkeypatch, batch=False, steps=3):
    monkeypatch.setenv("SAEFEAT_KERNELS", backend)
    torch.manual_seed(0)
    d_in, d_sae, k, B = 19, 70, 5, 13
    W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae) * 0.3)
    b_enc = torch.nn.Parameter(torch.randn(d_sae) * 0.1)
    W_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(d_sae, d_in), dim=1))
    b_dec = torch.nn.Parameter(torch.zeros(d_in))
    opt = SAEAdam([W_enc, b_enc, W_dec, b_dec], lr=1e-2, decoder=W_dec)
    x = torch.randn(B, d_in)
    encode = batch_topk_encode if batch else topk_encode
    losses = []
    for _ in range(steps):
        vals, idx = encode(x - b_dec, W_enc, b_enc, k)
        loss = (sparse_decode(idx, vals, W_dec, b_dec) - x).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach() for p in (W_enc, b_enc, W_dec, b_dec)]


@pytest.mark.parametrize("batch", [False, True])
def test_dense_cpu_path_matches_reference(monkeypatch, batch):
    dense_losses, dense_params = _step("auto", monkeypatch, batch)
    ref_losses, ref_params = _step("torch", monkeypatch, batch)
    torch.testing.assert_close(dense_losses, ref_losses, rtol=1e-5, atol=1e-5)
    for a, b in zip(dense_params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
