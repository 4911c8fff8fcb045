"""The two mixers of an SSAMBA block pair side by side (ssamba_cpu::mixer_pair_fwd, mamba.run_pair)."""
from __future__ import annotations

import pytest
import torch

from ssamba.models import build_encoder, mamba, scan
from ssamba.models.config import preset
from ssamba.models.mamba import BiMambaMixer, run_pair
from ssamba.models.scan import cpu, ops
from ssamba.models.ssamba import SSAMBAEncoder

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the CPU kernels could not be built here")


@pytest.fixture(autouse=True)
def restore_backend():
    """Tests here select scan backends: the automatic choice comes back after each (later files rely on it)."""
    yield
    scan.set_backend(None)


@pytest.fixture
def pair_calls(monkeypatch):
    """Counts ops.mixer_pair calls."""
    calls = []
    original = ops.mixer_pair
    monkeypatch.setattr(ops, "mixer_pair", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def mixers(seed: int, d_model: int = 24) -> tuple[BiMambaMixer, BiMambaMixer]:
    """Two mixers whose parameters all differ (per direction too), so a swapped tensor cannot go unnoticed."""
    torch.manual_seed(seed)
    pair = (BiMambaMixer(d_model=d_model, d_state=16), BiMambaMixer(d_model=d_model, d_state=16))
    with torch.no_grad():
        for p in [*pair[0].parameters(), *pair[1].parameters()]:
            p.add_(torch.randn_like(p) * 0.1)
    return pair


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length", [1, 7, 45])
def test_pair_op_equals_two_mixer_calls(threads, nthreads, bf16, length):
    """Bit for bit: the same kernels on the same inputs, only on another thread."""
    threads(nthreads)
    first, second = mixers(length)
    dtype = torch.bfloat16 if bf16 else torch.float32
    h = (torch.randn(2, length, 24, dtype=dtype), torch.randn(2, length, 24, dtype=dtype))
    args = (first._mixer_args(False), second._mixer_args(True))
    with torch.no_grad():
        both = ops.mixer_pair(h, args, cast_weights=bf16)
        one_by_one = [ops.mixer(x, *a, cast_weights=bf16) for x, a in zip(h, args)]
    assert [t.dtype for t in both] == [dtype, dtype]
    for a, b in zip(both, one_by_one):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_run_pair_on_two_threads_equals_the_mixer_calls(threads, pair_calls, bf16):
    threads(2)
    scan.set_backend("cpu")
    first, second = mixers(3)
    h_first, h_second = torch.randn(1, 33, 24), torch.randn(1, 33, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = run_pair(first, h_first, second, h_second)
        assert len(pair_calls) == 1
        expected = (first(h_first), second(h_second, reverse=True))
    for a, b in zip(out, expected):
        assert a.dtype == (torch.bfloat16 if bf16 else torch.float32)
        assert torch.equal(a, b)


def test_run_pair_keeps_one_mixer_after_the_other_otherwise(threads, pair_calls, monkeypatch):
    """Side by side only where it is the same computation and worth it: 2 threads, no gradient, the cpu backend,
    no hooks to honour, inputs up to PAIR_MAX_ELEMENTS."""
    scan.set_backend("cpu")
    first, second = mixers(4)
    h = torch.randn(1, 20, 24)
    threads(1)
    with torch.no_grad():
        run_pair(first, h, second, h)  # one thread: nothing to gain
    threads(3)
    with torch.no_grad():
        run_pair(first, h, second, h)  # more threads: each op keeps them all
    threads(2)
    out = run_pair(first, h, second, h)  # gradients wanted
    assert out[0].requires_grad
    scan.set_backend("reference")
    with torch.no_grad():
        run_pair(first, h, second, h)
    scan.set_backend("cpu")
    seen = []
    handle = second.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.no_grad():
        run_pair(first, h, second, h)
    handle.remove()
    assert seen == [h.shape]
    monkeypatch.setattr(mamba, "PAIR_MAX_ELEMENTS", 20 * 48 - 1)  # one element less than (1, 20, d_inner)
    with torch.no_grad():
        run_pair(first, h, second, h)
    assert not pair_calls
    monkeypatch.setattr(mamba, "PAIR_MAX_ELEMENTS", 20 * 48)
    with torch.no_grad():
        run_pair(first, h, second, h)
    assert len(pair_calls) == 1


def test_pair_op_reports_an_error_of_either_mixer(threads):
    """An error on the worker thread comes back as the op's exception (not a crash), with the op's message."""
    threads(2)
    first, second = mixers(5)
    args = (first._mixer_args(False), second._mixer_args(True))
    for bad in range(2):
        h = [torch.randn(1, 6, 24), torch.randn(1, 6, 24)]
        h[bad] = torch.randn(1, 6, 23)
        with torch.no_grad(), pytest.raises(RuntimeError, match="mixer_fwd: weight shapes do not fit hidden"):
            ops.mixer_pair(tuple(h), args)


def test_pair_op_passes_opcheck():
    first, second = mixers(6)
    detach = lambda a: a.detach() if isinstance(a, torch.Tensor) else [t.detach() for t in a]  # noqa: E731
    one, two = ([detach(a) for a in m._mixer_args(r)] for m, r in ((first, False), (second, True)))
    merged = [[a, b] if isinstance(a, torch.Tensor) else [*a, *b] for a, b in zip(one, two)]
    hidden = [torch.randn(2, 9, 24), torch.randn(2, 9, 24)]
    torch.library.opcheck(torch.ops.ssamba_cpu.mixer_pair_fwd.default, (hidden, *merged, False))


@pytest.mark.parametrize("fused_trunk", [True, False], ids=["fused-trunk", "residual-stream"])
def test_encoder_inference_with_pairs_side_by_side_equals_one_after_the_other(threads, pair_calls, monkeypatch,
                                                                               fused_trunk):
    """Both inference trunks (add_norms between pairs, and the plain PyTorch stream that other norms use)."""
    threads(2)
    scan.set_backend("cpu")
    torch.manual_seed(0)
    encoder = build_encoder(preset("ssamba", "tiny", input_tdim=64, depth=4)).eval()
    if not fused_trunk:
        monkeypatch.setattr(SSAMBAEncoder, "_fused_add_norms", lambda self, tokens: None)
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        fast = encoder(x)
        assert len(pair_calls) == 2
        monkeypatch.setattr(mamba, "PAIR_MAX_ELEMENTS", 0)
        slow = encoder(x)
        assert len(pair_calls) == 2
    assert torch.equal(fast, slow)


def test_compiled_inference_has_no_graph_break(threads):
    """run_pair asks for the thread count, which torch.compile cannot trace: it stands aside while compiling."""
    threads(2)
    scan.set_backend("cpu")
    torch.manual_seed(0)
    encoder = build_encoder(preset("ssamba", "tiny", input_tdim=32, depth=2)).eval()
    x = torch.randn(2, 32, 128)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(encoder)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        out = torch.compile(encoder)(x)
        eager = encoder(x)
    assert ((out - eager).abs().max() / eager.abs().max()).item() < 1e-5
