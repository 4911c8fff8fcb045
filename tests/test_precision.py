"""Matmul weights stored in bfloat16 for autocast inference: the same outputs, fewer casts."""
from __future__ import annotations

import pytest
import torch

from ssamba.models import build_encoder, preset
from ssamba.models.precision import cast_matmul_weights
from ssamba.models.scan import cpu

BF16 = torch.bfloat16


def autocast_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        return model(x)


@pytest.mark.parametrize("arch,backend", [("ssamba", "cpu"), ("ssamba", "reference"), ("ssast", None)])
def test_outputs_equal_plain_autocast_bit_for_bit(arch, backend):
    extra = {"scan_backend": backend} if backend else {}
    torch.manual_seed(0)
    model = build_encoder(preset(arch, "tiny", input_tdim=48, depth=2, **extra)).eval()
    x = torch.randn(2, 48, 128)
    expected = autocast_forward(model, x)
    assert cast_matmul_weights(model) is model
    got = autocast_forward(model, x)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)


def test_only_linear_weights_change_dtype():
    torch.manual_seed(0)
    model = build_encoder(preset("ssamba", "tiny", input_tdim=32, depth=2)).eval()
    linear_weights = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "layers.0.mixer.in_proj.weight" in linear_weights and "layers.0.mixer.dt_proj.weight" in linear_weights
    cast_matmul_weights(model)
    for name, param in model.named_parameters():
        # dt_proj.bias is the scan's delta bias (added in float32), A_log, D, norms and convs stay float32 too
        assert param.dtype == (BF16 if name in linear_weights else torch.float32), name


def test_without_autocast_it_is_an_error_and_float32_restores():
    torch.manual_seed(0)
    model = build_encoder(preset("ssamba", "tiny", input_tdim=32, depth=2)).eval()
    x = torch.randn(1, 32, 128)
    cast_matmul_weights(model)
    with pytest.raises(RuntimeError), torch.no_grad():
        model(x)
    cast_matmul_weights(model, torch.float32)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    with pytest.raises(ValueError, match="floating-point"):
        cast_matmul_weights(model, torch.int8)


@pytest.mark.parametrize("amx", [False, True], ids=["onednn", "amx"])
@pytest.mark.parametrize("nthreads", [1, 2], ids=["one-mixer-op", "pair-op"])
def test_fused_mixers_weight_casts_follow_autocast(threads, nthreads, amx, monkeypatch):
    """Through oneDNN (SSAMBA_AMX=0) the fused CPU mixer ops cast float32 weights through autocast's own cache, as
    F.linear does: once per autocast region (a weight changed in place inside the region is not re-cast, by torch's
    design), and afresh in the next region -- on two threads too, where the pair op casts on the calling thread,
    whose cache the region's end clears (a worker thread's cache would keep the old casts).  On AMX the ops round
    the float32 weights to bf16 as they pack them, on every call: no cast is kept, so an in-place change shows at
    once; everything else is the same."""
    if amx and not cpu.amx_available():
        pytest.skip("no AMX-BF16 on this machine")
    monkeypatch.setenv(cpu.AMX_VAR, "1" if amx else "0")
    threads(nthreads)
    torch.manual_seed(0)
    model = build_encoder(preset("ssamba", "tiny", input_tdim=48, depth=2, scan_backend="cpu")).eval()
    x = torch.randn(1, 48, 128)
    w = model.layers[0].mixer.in_proj.weight
    linear = torch.nn.Linear(192, 8, bias=False)
    h = torch.randn(5, 192)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        first, lin_first = model(x), linear(h)
        w.mul_(1.5)
        linear.weight.mul_(1.5)
        # F.linear's semantics: the region keeps its casts; the fused op shows the same, or, packing the float32
        # weights on every call (AMX), the new weights
        assert torch.equal(linear(h), lin_first)
        assert torch.equal(model(x), first) != amx
    fresh_model = autocast_forward(model, x)  # a new region casts the updated weights
    with torch.no_grad():
        w.div_(1.5)
    assert not torch.equal(fresh_model, first)
    assert torch.equal(autocast_forward(model, x), first)
    # frozen weights are not cached (autocast caches leaves that require grad), so a change shows at once
    model.requires_grad_(False)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        first = model(x)
        w.mul_(1.5)
        assert not torch.equal(model(x), first)
