"""The fused CPU mixer path against the step-by-step reference path, the official fixtures, and torch.compile."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ssamba
from ssamba.models import build_encoder, scan
from ssamba.models.config import preset
from ssamba.models.mamba import BiMambaMixer
from ssamba.models.scan import cpu, ops

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the CPU kernels could not be built here")

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest deviation relative to the largest entry (stricter than the norm-wise error)."""
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


@pytest.fixture
def backend():
    """Select a scan backend for one test and restore automatic choice afterwards."""
    yield scan.set_backend
    scan.set_backend(None)


def perturbed_mixer(seed: int) -> BiMambaMixer:
    """A mixer whose per-direction parameters all differ, so a swapped tensor cannot go unnoticed."""
    torch.manual_seed(seed)
    mixer = BiMambaMixer(d_model=24, d_state=16)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return mixer


def run(fn, x: torch.Tensor, grad: torch.Tensor, model: torch.nn.Module | None = None
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and all gradients (parameters of ``model``, default ``fn`` itself, and the input)."""
    model = fn if model is None else model
    model.zero_grad()
    x = x.clone().requires_grad_()
    out = fn(x)
    out.backward(grad)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    return out.detach(), grads


def test_fused_path_is_taken_only_with_the_cpu_backend(backend, monkeypatch):
    mixer = perturbed_mixer(0)
    calls = []
    original = BiMambaMixer._forward_fused
    monkeypatch.setattr(BiMambaMixer, "_forward_fused", lambda self, h, rev=False: calls.append(1) or original(self, h, rev))
    x = torch.randn(2, 10, 24)
    backend("reference")
    mixer(x)
    mixer(x, reverse=True)
    assert not calls
    backend("cpu")
    mixer(x)
    backend(None)
    mixer(x)
    assert len(calls) == 2


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("length", [1, 7, 45])
def test_fused_mixer_matches_reference_mixer(backend, length, reverse):
    """reverse=True (the second block of a pair): the reference flips, the fused path swaps parameter sets."""
    mixer = perturbed_mixer(length)
    x = torch.randn(3, length, 24)
    grad = torch.randn(3, length, 24)
    call = lambda h: mixer(h, reverse=reverse)  # noqa: E731
    backend("reference")
    ref, ref_grads = run(call, x, grad, mixer)
    backend("cpu")
    out, grads = run(call, x, grad, mixer)
    assert max_rel_err(out, ref) < 1e-5
    assert set(grads) == set(ref_grads) and len(grads) == 17  # 16 parameters and the input
    for name, g in grads.items():
        if name in ("A_log", "A_b_log") and length == 1:
            assert g.abs().max() == 0 and ref_grads[name].abs().max() == 0  # the state before step 0 is zero
            continue
        assert rel_err(g, ref_grads[name]) < 1e-4, name


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_flip_free_mixer_matches_reference_mixer(backend, reverse):
    """The path of backends that scan backwards natively (anti-causal conv, reverse scan), run here through the
    reference scan's reverse, against the literal spec path with its flips; forward and every gradient."""
    mixer = perturbed_mixer(9)
    x, grad = torch.randn(2, 9, 24), torch.randn(2, 9, 24)
    backend("reference")
    ref, ref_grads = run(lambda h: mixer(h, reverse=reverse), x, grad, mixer)
    out, grads = run(lambda h: mixer._forward_flip_free(h, reverse), x, grad, mixer)
    assert max_rel_err(out, ref) < 1e-6
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        assert rel_err(g, ref_grads[name]) < 1e-5, name


def test_flip_free_mixer_under_bf16_autocast(backend):
    """The channels-first path's batched matmuls run in bf16 under autocast and the scan still computes in float32:
    within bf16 rounding of the float32 result, gradients included."""
    mixer = perturbed_mixer(11)
    x, grad = torch.randn(2, 33, 24), torch.randn(2, 33, 24)
    backend("reference")
    ref, ref_grads = run(lambda h: mixer._forward_flip_free(h, True), x, grad, mixer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = run(lambda h: mixer._forward_flip_free(h, True), x, grad, mixer)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 2e-2
    for name, g in grads.items():
        assert rel_err(g, ref_grads[name]) < 5e-2, name


def test_ssamba_model_with_kernel_matches_reference_model(backend):
    torch.manual_seed(0)
    encoder = build_encoder(preset("ssamba", "tiny", input_tdim=64, depth=4)).train()
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "A_log" in name or "A_b_log" in name or name.endswith(".D") or name.endswith(".D_b"):
                p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 64, 128)
    out0 = encoder(x)
    grad = torch.randn_like(out0)

    def run_seeded():
        torch.manual_seed(1)  # same drop-path masks in both runs
        return run(encoder, x, grad)

    backend("reference")
    ref, ref_grads = run_seeded()
    backend("cpu")
    out, grads = run_seeded()
    assert max_rel_err(out, ref) < 1e-5
    assert len(grads) == len(ref_grads) > 50
    worst = max(rel_err(g, ref_grads[n]) for n, g in grads.items())
    assert worst < 1e-4


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="official fixtures not found")
@pytest.mark.parametrize("key", ["avgtok", "encoder_out"])
def test_official_finetune_fixture_with_cpu_backend(backend, key):
    backend("cpu")
    model = ssamba.load(OFFICIAL / "official_tiny_finetune_t256.pth")
    x = torch.load(OFFICIAL / "inputs.pt", weights_only=True)["x_ft_t256"]
    expected = torch.load(OFFICIAL / "outputs.pt", weights_only=True)[f"ft_t256_{key}"]
    with torch.no_grad():
        out = model(x) if key == "avgtok" else model.encoder(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_bf16_autocast_runs_the_fused_path_close_to_float32(backend):
    backend("cpu")
    mixer = perturbed_mixer(3)
    x = torch.randn(2, 30, 24)
    with torch.no_grad():
        full = mixer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = mixer(x)
    assert half.dtype == torch.bfloat16
    assert rel_err(half.float(), full) < 3e-2


def test_torch_compile_of_the_model_runs_and_matches_eager(backend):
    backend("cpu")
    torch.manual_seed(0)
    encoder = build_encoder(preset("ssamba", "tiny", input_tdim=32, depth=2)).eval()
    x = torch.randn(2, 32, 128)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(encoder)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(encoder)
    with torch.no_grad():
        eager = encoder(x)
        out = compiled(x)
    assert max_rel_err(out, eager) < 1e-5
    # training step through the compiled graph (autograd of the custom ops)
    encoder.train()
    compiled(x).square().mean().backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert len(grads) > 20 and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("length", [1, 7, 45])
def test_inference_mixer_op_matches_the_differentiable_fused_path(backend, length, reverse, bf16, monkeypatch):
    """Without gradients the mixer runs as one C++ call (ssamba_cpu::mixer_fwd); it must compute what the
    differentiable op-by-op path computes (same matmuls, same kernels: equal up to float rounding)."""
    backend("cpu")
    mixer = perturbed_mixer(10 + length)
    x = torch.randn(3, length, 24)
    calls = []
    original = ops.mixer
    monkeypatch.setattr(ops, "mixer", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            fast = mixer(x, reverse=reverse)
        assert len(calls) == 1
        slow = mixer(x.clone().requires_grad_(), reverse=reverse)  # needs a gradient: the op-by-op path
        assert len(calls) == 1 and slow.requires_grad
    assert fast.dtype == slow.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert max_rel_err(fast, slow) < (1e-2 if bf16 else 1e-6)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("length", [1, 45, 300])
def test_inference_mixer_op_equals_the_op_by_op_path_bit_for_bit(backend, length, reverse, bf16, monkeypatch):
    """The one-call mixer and the op-by-op path without gradients run the same matmuls and kernels: equal bit for
    bit.  Under bf16 autocast the op's scan writes out_proj's bf16 input itself, rounded as ``.to`` rounds."""
    backend("cpu")
    mixer = perturbed_mixer(20 + length)
    x = torch.randn(2, length, 24) * 3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fast = mixer(x, reverse=reverse)
        monkeypatch.setattr(mixer, "_inference_op_fits", lambda hidden: False)
        slow = mixer(x, reverse=reverse)
    assert fast.dtype == slow.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert torch.equal(fast, slow)


def test_inference_mixer_op_runs_with_frozen_parameters_under_grad_mode(backend, monkeypatch):
    """Frozen weights and an input that needs no gradient: nothing to differentiate, so the one-call path runs."""
    backend("cpu")
    mixer = perturbed_mixer(5).requires_grad_(False)
    calls = []
    original = ops.mixer
    monkeypatch.setattr(ops, "mixer", lambda *a, **k: calls.append(1) or original(*a, **k))
    out = mixer(torch.randn(1, 9, 24))
    assert calls and not out.requires_grad


def test_inference_mixer_op_names_a_dtype_mismatch(backend):
    backend("cpu")
    mixer = perturbed_mixer(6)
    mixer.out_proj.to(torch.bfloat16)  # float32 activations with one bf16 weight and no autocast
    with torch.no_grad(), pytest.raises(RuntimeError, match="mixer_fwd.*matmul weight.*BFloat16"):
        mixer(torch.randn(1, 5, 24))


@pytest.mark.parametrize("cast_weights", [False, True])
def test_inference_mixer_op_passes_opcheck(cast_weights):
    """Schema and fake implementation agree with the kernel (torch.compile traces it in inference)."""
    mixer = perturbed_mixer(8)
    hidden = torch.randn(2, 11, 24, dtype=torch.bfloat16 if cast_weights else torch.float32)
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else [t.detach() for t in a]
                 for a in mixer._mixer_args(reverse=False))
    torch.library.opcheck(torch.ops.ssamba_cpu.mixer_fwd.default, (hidden, *args, cast_weights))


def test_parametrized_weights_reach_both_paths(backend):
    """A parametrized weight (here: scaled by 2) is not in the module's parameter dict; both the inference op and
    the differentiable path must still use its parametrized value."""
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    backend("cpu")
    mixer = perturbed_mixer(12)
    plain = perturbed_mixer(12)
    with torch.no_grad():
        plain.out_proj.weight.mul_(2)
    parametrize.register_parametrization(mixer.out_proj, "weight", Double())
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        assert max_rel_err(mixer(x), plain(x)) < 1e-6
    assert max_rel_err(mixer(x.requires_grad_()), plain(x)) < 1e-6
