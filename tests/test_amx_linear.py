"""The AMX bf16 matmuls of the fused inference mixer (csrc/amx_linear.cpp): a bf16 matmul's numbers, and the
mixer's outputs through them equal to those through oneDNN."""
from __future__ import annotations

import pytest
import torch

from ssamba.models import build_encoder, preset
from ssamba.models.scan import cpu

BF16 = torch.bfloat16
pytestmark = pytest.mark.skipif(not cpu.amx_available(), reason="no AMX-BF16 on this machine (or SSAMBA_AMX=0)")


def bf16_matmul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What a bf16 matmul computes: bf16 operands (the weight rounded as autocast casts it), exact products summed
    in float64 here, the sum rounded to bf16."""
    return (a.double() @ w.to(BF16).double().t()).to(BF16)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (32, 32, 32), (513, 192, 384), (513, 384, 44), (513, 12, 384),
                                   (70, 100, 17), (33, 64, 200)])
@pytest.mark.parametrize("wdtype", [torch.float32, BF16])
def test_matches_a_bf16_matmul(m, k, n, wdtype):
    g = torch.Generator().manual_seed(m * 1000 + k + n)
    a = torch.randn(m, k, generator=g).to(BF16)
    w = torch.randn(n, k, generator=g).to(wdtype)
    got = torch.ops.ssamba_cpu.amx_linear(a, w)
    want = bf16_matmul(a, w)
    assert got.dtype == BF16 and got.shape == (m, n)
    # float32 accumulation vs float64: one bf16 step apart at most, where the float32 sum sits on a rounding edge
    # or cancels (float32 rounding of the partial sums, bounded by the sum of |products|)
    magnitude = a.abs().double() @ w.to(BF16).abs().double().t()
    step = want.abs().double() * 2.0**-7 + magnitude * 2.0**-20
    assert ((got.double() - want.double()).abs() <= step).all()
    assert (got == want).float().mean() > 0.97


def test_strided_rows_and_weight_views():
    g = torch.Generator().manual_seed(1)
    dbl = torch.randn(100, 44, generator=g).to(BF16)
    w = torch.randn(768, 12, generator=g)
    a, w_half = dbl.narrow(1, 0, 12), w.narrow(0, 384, 384)  # dt_proj's input; in_proj's z half
    assert torch.equal(torch.ops.ssamba_cpu.amx_linear(a, w_half), torch.ops.ssamba_cpu.amx_linear(a.contiguous(),
                                                                                                 w_half.contiguous()))
    want = bf16_matmul(a, w_half).float()
    assert ((torch.ops.ssamba_cpu.amx_linear(a, w_half).float() - want).abs() <= want.abs() * 2.0**-7).all()
    with pytest.raises(RuntimeError, match="bfloat16"):
        torch.ops.ssamba_cpu.amx_linear(a.float(), w_half)


@pytest.mark.parametrize("weights", ["float32", "bf16-stored"])
def test_model_output_equals_the_onednn_path(weights, monkeypatch):
    """SSAMBA under bf16 autocast with the mixers' matmuls on AMX vs through oneDNN (SSAMBA_AMX=0): the same bf16
    products with float32 sums; measured bit for bit equal on oneDNN 3.x (AMX brgemm sums k in the same order),
    asserted here to bf16 rounding so that another oneDNN's summation order does not fail it."""
    torch.manual_seed(0)
    model = build_encoder(preset("ssamba", "tiny", input_tdim=64, depth=4, scan_backend="cpu")).eval()
    if weights == "bf16-stored":
        from ssamba.models.precision import cast_matmul_weights

        cast_matmul_weights(model)
    x = torch.randn(2, 64, 128)
    outs = []
    for amx in ("0", "1"):
        monkeypatch.setenv(cpu.AMX_VAR, amx)
        with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
            outs.append(model(x).float())
    assert torch.isfinite(outs[1]).all()
    torch.testing.assert_close(outs[1], outs[0], rtol=2e-2, atol=2e-2)
