"""The residual adds and LayerNorms between block pairs in one Triton pass (triton_norms.add_norms), run here in
Triton's interpreter: the same sums as the eager stream bit for bit, LayerNorm to float rounding, and the encoder's
inference trunk through it on the "triton" backend equal to the plain stream."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssamba.models import build_encoder
from ssamba.models.config import preset
from ssamba.models.scan import triton_norms, triton_ops
from ssamba.models.ssamba import SSAMBAEncoder

pytestmark = pytest.mark.skipif(not triton_ops.available(), reason="Triton is not installed (pip install 'ssamba[gpu]')")


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def norms(dim: int, count: int, seed: int, eps: float = 1e-6) -> list[torch.nn.LayerNorm]:
    torch.manual_seed(seed)
    out = [torch.nn.LayerNorm(dim, eps=eps) for _ in range(count)]
    with torch.no_grad():
        for n in out:
            n.weight.normal_(1.0, 0.3)
            n.bias.normal_(0.0, 0.3)
    return out


@pytest.mark.parametrize("dim", [192, 37])  # a power-of-two block with 64 padded channels, and an odd width
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_prev,with_h2,count", [(True, True, 2), (False, False, 2), (True, False, 1)])
def test_add_norms_matches_the_eager_stream(dim, dtype, with_prev, with_h2, count):
    torch.manual_seed(dim)
    shape = (2, 71, dim)  # 142 rows: a partial last block of rows
    prev = torch.randn(shape) * 3 + 1 if with_prev else None
    h1 = (torch.randn(shape) + 0.5).to(dtype)
    h2 = torch.randn(shape).to(dtype) if with_h2 else None
    layer_norms = norms(dim, count, seed=1)
    with torch.no_grad():
        r, outs = triton_norms.add_norms(prev, h1, h2, layer_norms)
        # what ssamba.py computes: the pair's outputs summed in their dtype, then the doubled residual added
        h = h1 if h2 is None else h1 + h2
        want_r = h.float() if prev is None else (prev + prev) + h
        assert r.dtype == torch.float32 and torch.equal(r, want_r)  # same additions, same order, same roundings
        assert len(outs) == count
        for out, norm in zip(outs, layer_norms):
            assert out.dtype == torch.float32 and out.shape == shape
            assert max_rel_err(out, norm(want_r)) < 2e-6


def test_add_norms_writes_the_requested_dtype_and_refuses_mismatches():
    layer_norms = norms(24, 2, seed=3)
    h = torch.randn(3, 5, 24)
    with torch.no_grad():
        r, outs = triton_norms.add_norms(None, h, None, layer_norms, torch.bfloat16)
        assert torch.equal(r, h)
        for out, norm in zip(outs, layer_norms):
            assert out.dtype == torch.bfloat16 and max_rel_err(out, norm(h)) < 1e-2
        (norm,) = norms(8, 1, seed=2)
        x = torch.randn(5, 8)
        r, (out,) = triton_norms.add_norms(None, x, None, [norm])
        assert torch.equal(r, x) and max_rel_err(out, F.layer_norm(x, (8,), norm.weight, norm.bias, 1e-6)) < 2e-6
        empty_r, (empty,) = triton_norms.add_norms(None, x[:0], None, [norm])
        assert empty_r.shape == empty.shape == (0, 8)
        with pytest.raises(ValueError, match="h2 has shape"):
            triton_norms.add_norms(None, x, x[:3], [norm])
        with pytest.raises(ValueError, match="h2 is torch.bfloat16, h1 torch.float32"):
            triton_norms.add_norms(None, x, x.bfloat16(), [norm])
        with pytest.raises(ValueError, match="prev must be float32"):
            triton_norms.add_norms(x.bfloat16(), x, None, [norm])
        with pytest.raises(ValueError, match="one eps"):
            triton_norms.add_norms(None, x, None, [norm, *norms(8, 1, seed=2, eps=1e-5)])
        with pytest.raises(ValueError, match="over the last dimension"):
            triton_norms.add_norms(None, x, None, norms(4, 1, seed=2))


@pytest.fixture
def encoder():
    """Two block pairs on the triton backend, whose trunk takes triton_norms.add_norms; the mixers scan with the
    reference backend (what is checked here is the trunk around them, and the interpreter is slow)."""
    torch.manual_seed(0)
    model = build_encoder(preset("ssamba", "tiny", input_tdim=32, input_fdim=32, depth=4, embed_dim=16, d_state=4,
                                 scan_backend="triton")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    for layer in model.layers:
        layer.mixer.scan_backend = "reference"
    return model


def test_triton_inference_trunk_matches_the_plain_stream(encoder, monkeypatch):
    """Output and every collected per-pair stream (hidden_states) against residual_stream + norm_f, with one
    add_norms call per pair and one for the final norm."""
    calls = []
    original = triton_norms.add_norms
    monkeypatch.setattr(triton_norms, "add_norms", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(2, 32, 32)
    with torch.no_grad():
        tokens = encoder.tokens(x)
        fast_states, slow_states = [], []
        fast = encoder.trunk(tokens, fast_states)
        assert len(calls) == 3
        monkeypatch.setattr(SSAMBAEncoder, "_fused_add_norms", lambda self, t: None)
        slow = encoder.trunk(tokens, slow_states)
        assert len(calls) == 3
    assert len(fast_states) == len(slow_states) == 2
    assert max_rel_err(fast, slow) < 1e-5
    for a, b in zip(fast_states, slow_states):
        assert max_rel_err(a, b) < 1e-5


def test_triton_inference_trunk_not_taken_for_training_gradients_or_the_reference(encoder, monkeypatch):
    calls = []
    monkeypatch.setattr(triton_norms, "add_norms", lambda *a: calls.append(1))
    tokens = torch.randn(1, 5, 16)
    with torch.no_grad():
        assert encoder._fused_add_norms(tokens) is triton_norms.add_norms  # eval, no gradient: taken
        encoder.train()
        assert encoder._fused_add_norms(tokens) is None  # drop path may be active
        encoder.eval()
        encoder.config.scan_backend = "reference"  # the literal spec path stays literal
        assert encoder._fused_add_norms(tokens) is None
    assert encoder._fused_add_norms(tokens) is None  # gradients enabled
    assert not calls
