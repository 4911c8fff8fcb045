"""The CPU inference trunk: residual adds and LayerNorms between block pairs in one op (ssamba_cpu::add_norms)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssamba.models import build_encoder, scan
from ssamba.models.config import preset
from ssamba.models.scan import cpu, ops
from ssamba.models.ssamba import SSAMBAEncoder

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the CPU kernels could not be built here")

ISAS = torch.ops.ssamba_cpu.supported_isas() if cpu.available() else []


@pytest.fixture(params=ISAS)
def isa(request):
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa("auto")


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def norms(dim: int, count: int, seed: int) -> list[torch.nn.LayerNorm]:
    torch.manual_seed(seed)
    out = [torch.nn.LayerNorm(dim, eps=1e-6) for _ in range(count)]
    with torch.no_grad():
        for n in out:
            n.weight.normal_(1.0, 0.3)
            n.bias.normal_(0.0, 0.3)
    return out


@pytest.mark.parametrize("dim", [192, 37])  # whole vectors, and a partial last vector for every ISA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_prev,with_h2", [(True, True), (False, False), (True, False)])
def test_add_norms_matches_torch(isa, dim, dtype, with_prev, with_h2):
    torch.manual_seed(dim)
    shape = (2, 71, dim)  # 142 rows: three row tasks
    prev = torch.randn(shape) * 3 + 1 if with_prev else None
    h1 = (torch.randn(shape) + 0.5).to(dtype)
    h2 = torch.randn(shape).to(dtype) if with_h2 else None
    layer_norms = norms(dim, 2, seed=1)
    with torch.no_grad():
        r, outs = ops.add_norms(prev, h1, h2, layer_norms)
        # what ssamba.py computes: the pair's outputs summed in their dtype, then the doubled residual added
        h = h1 if h2 is None else h1 + h2
        want_r = h.float() if prev is None else (prev + prev) + h
        assert r.dtype == torch.float32 and torch.equal(r, want_r)  # same additions, same order
        assert len(outs) == 2
        for out, norm in zip(outs, layer_norms):
            assert out.dtype == torch.float32 and out.shape == shape
            assert max_rel_err(out, norm(want_r)) < 2e-6


@pytest.mark.parametrize("dim", [192, 37])
def test_add_norms_writes_bf16_norms_rounded_like_tensor_to(isa, dim):
    """out_dtype=bfloat16 (the mixers' matmul input under bf16 autocast): the float32 norms rounded to nearest
    even, bit for bit what ``.to(torch.bfloat16)`` gives, and NaN where it gives NaN (the kernel writes the
    canonical quiet NaN, torch keeps the payload); the residual stays float32."""
    torch.manual_seed(dim + 1)
    h1 = torch.randn(3, 50, dim) * 4
    h1[0, 3, 0] = float("nan")  # one NaN row: its norms are all NaN
    layer_norms = norms(dim, 2, seed=4)
    with torch.no_grad():
        r32, want = ops.add_norms(None, h1, None, layer_norms)
        r16, outs = ops.add_norms(None, h1, None, layer_norms, torch.bfloat16)
    assert r16.dtype == torch.float32 and torch.equal(r16.view(torch.int32), r32.view(torch.int32))
    for out, ref in zip(outs, want):
        ref = ref.to(torch.bfloat16)
        assert out.dtype == torch.bfloat16 and torch.equal(out.isnan(), ref.isnan()) and out[0, 3].isnan().all()
        ok = ~ref.isnan()
        assert torch.equal(out[ok].view(torch.int16), ref[ok].view(torch.int16))
    with pytest.raises(RuntimeError, match="float32 or bfloat16, not Half"):
        ops.add_norms(None, h1, None, layer_norms, torch.float16)


def test_add_norms_single_norm_and_checks():
    (norm,) = norms(8, 1, seed=2)
    h = torch.randn(5, 8)
    with torch.no_grad():
        r, (out,) = ops.add_norms(None, h, None, [norm])
        assert torch.equal(r, h) and max_rel_err(out, F.layer_norm(h, (8,), norm.weight, norm.bias, 1e-6)) < 2e-6
        with pytest.raises(RuntimeError, match="differ in shape or dtype"):
            ops.add_norms(None, h, h.bfloat16(), [norm])
        with pytest.raises(RuntimeError, match="residual must be float32"):
            ops.add_norms(h.bfloat16(), h.bfloat16(), None, [norm])


def test_add_norms_passes_opcheck():
    layer_norms = norms(24, 2, seed=3)
    args = (torch.randn(2, 5, 24), torch.randn(2, 5, 24).bfloat16(), torch.randn(2, 5, 24).bfloat16(),
            [n.weight.detach() for n in layer_norms], [n.bias.detach() for n in layer_norms], 1e-6)
    torch.library.opcheck(torch.ops.ssamba_cpu.add_norms.default, args)
    torch.library.opcheck(torch.ops.ssamba_cpu.add_norms.default, args + (torch.bfloat16,))


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    model = build_encoder(preset("ssamba", "tiny", input_tdim=64, depth=6)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    yield model
    scan.set_backend(None)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_cpu_inference_trunk_matches_the_general_stream(encoder, monkeypatch, bf16):
    """Output and every collected per-pair stream (hidden_states) against residual_stream + norm_f."""
    scan.set_backend("cpu")
    calls = []
    original = ops.add_norms
    monkeypatch.setattr(ops, "add_norms", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(2, 64, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tokens = encoder.tokens(x)
        fast_states, slow_states = [], []
        fast = encoder.trunk(tokens, fast_states)
        assert len(calls) == 4  # one per pair and the final norm
        monkeypatch.setattr(SSAMBAEncoder, "_fused_add_norms", lambda self, t: None)
        slow = encoder.trunk(tokens, slow_states)
        assert len(calls) == 4
    assert len(fast_states) == len(slow_states) == 3
    tol = 2e-2 if bf16 else 1e-5
    assert max_rel_err(fast, slow) < tol
    for a, b in zip(fast_states, slow_states):
        assert max_rel_err(a, b) < tol


def test_bf16_autocast_trunk_feeds_the_mixers_bf16_norms_with_the_same_result(encoder, monkeypatch):
    """Under bf16 autocast the pair norms come out of add_norms in bf16 (the mixers would cast them first thing):
    the mixers see bf16 inputs, and the encoder's output is bit for bit the one with float32 norms."""
    from ssamba.models import ssamba as ssamba_module

    scan.set_backend("cpu")
    seen = []
    original = ssamba_module.run_pair
    monkeypatch.setattr(ssamba_module, "run_pair", lambda a, x, b, y: seen.append((x.dtype, y.dtype)) or
                        original(a, x, b, y))
    x = torch.randn(2, 64, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        direct = encoder(x)
        assert seen == [(torch.bfloat16, torch.bfloat16)] * 3
        monkeypatch.setattr(ssamba_module, "pair_input_dtype", lambda *a: None)
        via_float32 = encoder(x)
        assert seen[3:] == [(torch.float32, torch.float32)] * 3
    assert torch.equal(direct, via_float32)
    # a hooked mixer keeps float32 inputs: its hook sees what the module would be called with without the op
    monkeypatch.undo()
    monkeypatch.setattr(ssamba_module, "run_pair", lambda a, x, b, y: seen.append((x.dtype, y.dtype)) or
                        original(a, x, b, y))
    handle = encoder.layers[2].mixer.register_forward_hook(lambda *a: None)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            seen.clear()
            encoder(x)
    finally:
        handle.remove()
    assert seen == [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
                    (torch.bfloat16, torch.bfloat16)]


def test_cpu_inference_trunk_not_taken_in_training_or_with_gradients(encoder, monkeypatch):
    scan.set_backend("cpu")
    calls = []
    monkeypatch.setattr(ops, "add_norms", lambda *a: calls.append(1))
    x = torch.randn(1, 64, 128)
    encoder(x)  # eval, but gradients enabled
    encoder.train()
    with torch.no_grad():
        encoder(x)  # drop path may be active
    scan.set_backend("reference")
    encoder.eval()
    with torch.no_grad():
        encoder(x)  # another scan backend keeps the plain PyTorch stream
    assert not calls


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_hooks_on_blocks_and_norms_run_in_inference_too(encoder, backend):
    """A forward hook on a block or a norm (feature extraction, ablation) fires and takes effect under no_grad as it
    does with gradients: the fused paths give way to the module calls when one is hooked."""
    scan.set_backend(backend)
    x = torch.randn(1, 64, 128)
    fired: list[str] = []
    handles = [encoder.layers[2].register_forward_hook(lambda *a: fired.append("block") and None),
               encoder.layers[3].norm.register_forward_hook(lambda m, i, out: fired.append("norm") or out * 0),
               encoder.norm_f.register_forward_hook(lambda *a: fired.append("norm_f") and None)]
    try:
        with_grad = encoder(x)
        expected, fired[:] = list(fired), []
        with torch.no_grad():
            without_grad = encoder(x)
    finally:
        for handle in handles:
            handle.remove()
    assert expected == ["block", "norm", "norm_f", "norm_f"] and fired == expected
    torch.testing.assert_close(without_grad, with_grad.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(encoder(x), without_grad, atol=1e-3)  # the ablation did change the output


def test_float16_autocast_and_float16_models_run_on_the_cpu_backend(encoder):
    scan.set_backend("cpu")
    x = torch.randn(1, 64, 128)
    with torch.no_grad():
        want = encoder(x)
        with torch.autocast("cpu", dtype=torch.float16):
            got = encoder(x)  # the norms' fused op reads float32/bf16 only: the stream goes module by module
        assert max_rel_err(got.float(), want) < 2e-2
        half = encoder.half()
        out = half(x.half())  # fp16 weights: the mixers run step by step, their scans on the cpu kernels
        scan.set_backend("reference")
        assert max_rel_err(out, half(x.half())) < 5e-3  # fp16 rounding apart
    assert out.dtype == torch.float16 and max_rel_err(out.float(), want) < 2e-2
