"""The fused depthwise conv + SiLU kernel (Triton) against F.conv1d + SiLU: both directions, fp32 and bf16, gradients.

Without a GPU the kernel runs in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1``)."""
from __future__ import annotations

import pytest
import torch
from conftest import rel_err

from ssamba.models.scan import triton_conv, triton_ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(not triton_ops.available(), reason="Triton is not installed (pip install 'ssamba[gpu]')"),
    pytest.mark.skipif(DEVICE == "cpu" and triton_ops.available() and not triton_ops.interpreted(),
                       reason="no GPU and Triton was imported without TRITON_INTERPRET=1"),
]


def inputs(batch=2, dim=11, length=300, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=g).to(DEVICE)
    w = (torch.randn(dim, 1, k, generator=g) * 0.5).to(DEVICE)
    b = (torch.randn(dim, generator=g) * 0.1).to(DEVICE)
    return x, w, b


def grads_of(fn, x, w, b, weight):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = fn(*leaves)
    (out.float() * weight).sum().backward()
    return out.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("backwards", [False, True], ids=["causal", "anti-causal"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_matches_conv1d_and_silu(backwards, with_bias):
    """Several time blocks (300 steps > 256) and a partial channel block (11 > 8); outputs and every gradient."""
    x, w, b = inputs()
    b = b if with_bias else None
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out, grads = grads_of(lambda *a: triton_conv.conv_silu(*a, backwards=backwards), x, w, b, weight)
    ref, ref_grads = grads_of(lambda *a: triton_conv.conv_silu_reference(*a, backwards), x, w, b, weight)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert rel_err(out, ref) < 1e-6
    for got, want in zip(grads, ref_grads):
        assert (got is None) == (want is None)
        if got is not None:
            assert rel_err(got, want) < 1e-6
    # the direction matters: the causal and anti-causal results differ
    other = triton_conv.conv_silu(x, w, b, backwards=not backwards)
    assert rel_err(other, out) > 0.1


def test_strided_batch_and_bf16():
    """A channel slice of a wider activation (batch stride != E*L) and bf16 input: computed in float32, returned
    in bf16, within bf16 rounding of the float32 result."""
    wide, w, b = inputs(dim=22)
    x = wide[:, 5:16]
    w, b = w[:11], b[:11]
    out = triton_conv.conv_silu(x, w, b)
    assert rel_err(out, triton_conv.conv_silu_reference(x, w, b, False)) < 1e-6
    out16 = triton_conv.conv_silu(x.bfloat16(), w, b, backwards=True)
    assert out16.dtype == torch.bfloat16
    assert rel_err(out16, triton_conv.conv_silu_reference(x.bfloat16().float(), w, b, True)) < 1e-2


def test_short_sequences():
    for length in (1, 3):
        x, w, b = inputs(length=length)
        for backwards in (False, True):
            ref = triton_conv.conv_silu_reference(x, w, b, backwards)
            assert rel_err(triton_conv.conv_silu(x, w, b, backwards), ref) < 1e-6


def test_calls_past_32_bit_offsets_split_the_batch(monkeypatch):
    """Offsets past 2**31 - 1 elements would wrap in the kernel's 32-bit arithmetic: such a call runs batch slices
    (here the limit is lowered to one item's span), with the same outputs and gradients; one item past it is refused
    by name."""
    x, w, b = inputs(batch=3, dim=5, length=40)
    weight = torch.linspace(-1, 1, x.numel(), device=DEVICE).reshape(x.shape)
    whole, whole_grads = grads_of(lambda *t: triton_conv.conv_silu(*t, True), x, w, b, weight)
    launches = []
    real = triton_conv._ConvSilu.apply
    monkeypatch.setattr(triton_conv._ConvSilu, "apply", lambda *a: launches.append(a[0].shape[0]) or real(*a))
    monkeypatch.setattr(triton_ops, "MAX_OFFSET", 5 * 40)
    split, split_grads = grads_of(lambda *t: triton_conv.conv_silu(*t, True), x, w, b, weight)
    assert launches == [1, 1, 1]
    assert torch.equal(split, whole)
    for got, want in zip(split_grads, whole_grads):
        assert rel_err(got, want) < 1e-6
    monkeypatch.setattr(triton_ops, "MAX_OFFSET", 5 * 40 - 1)
    with pytest.raises(ValueError, match=r"conv \+ SiLU of \(3, 5, 40\): one batch item spans 200 elements"):
        triton_conv.conv_silu(x, w, b)


def test_pair_is_both_directions_from_one_launch():
    """``conv_silu_pair``: the causal conv of one weight set and the anti-causal one of another, stacked, equal bit
    for bit to the single-direction kernel's (the mixer's two directions at inference), on a strided input."""
    wide, w, b = inputs(dim=22, length=300)
    x = wide[:, 5:16]
    _, w2, b2 = inputs(dim=11, seed=3)
    with torch.no_grad():
        both = triton_conv.conv_silu_pair(x, (w[:11], b[:11]), (w2, b2))
        want = torch.stack([triton_conv.conv_silu(x, w[:11], b[:11]), triton_conv.conv_silu(x, w2, b2, True)])
    assert both.shape == (2, *x.shape) and torch.equal(both, want)
    assert rel_err(both[1], triton_conv.conv_silu_reference(x, w2, b2, True)) < 1e-6


def test_pair_past_32_bit_offsets_runs_as_two_sliced_launches(monkeypatch):
    """A stacked output the kernel's 32-bit offsets would not reach takes the single-direction launches, which split
    the batch (here with the limit lowered so that a small input crosses it)."""
    x, w, b = inputs(dim=11, length=300)
    _, w2, b2 = inputs(dim=11, seed=3)
    with torch.no_grad():
        want = triton_conv.conv_silu_pair(x, (w, b), (w2, b2))
        monkeypatch.setattr(triton_ops, "MAX_OFFSET", x[0].numel() + 1)  # one batch item fits, the pair does not
        singles, single = [], triton_conv.conv_silu
        monkeypatch.setattr(triton_conv, "conv_silu", lambda *a, **k: singles.append(k) or single(*a, **k))
        got = triton_conv.conv_silu_pair(x, (w, b), (w2, b2))
    assert singles == [{}, {"backwards": True}] and torch.equal(got, want)
