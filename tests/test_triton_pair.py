"""Both directions of the mixer's scans in one launch (``triton_pair``) against the float64 reference and the
two-launch path, and the mixer taking it for inference.  In Triton's interpreter without a GPU (conftest)."""
from __future__ import annotations

import pytest
import torch
from conftest import rel_err, triton_and_reference_mixers

from ssamba.models.scan import selective_scan, triton_ops, triton_pair
from ssamba.models.scan.triton_ops import TritonConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(not triton_ops.available(), reason="Triton is not installed (pip install 'ssamba[gpu]')"),
    pytest.mark.skipif(DEVICE == "cpu" and triton_ops.available() and not triton_ops.interpreted(),
                       reason="no GPU and Triton was imported without TRITON_INTERPRET=1"),
]


@pytest.fixture
def serial():
    """Sets a "serial" launch shape (``serial(config)``) and restores the default afterwards."""
    yield triton_ops.set_config
    triton_ops.set_config(None)


def direction(batch: int, dim: int, rank: int, n: int, length: int, dtype=torch.float32) -> triton_pair.Direction:
    """Random inputs of one direction, dt, B and C rows of one projection as in the mixer."""
    dbl = torch.randn(batch, rank + 2 * n, length, device=DEVICE).to(dtype)
    dt, b, c = dbl.split([rank, n, n], dim=1)
    return triton_pair.Direction(torch.randn(batch, dim, length, device=DEVICE).to(dtype), dt, b, c,
                                 torch.log(torch.rand(dim, n, device=DEVICE) + 0.5), torch.randn(dim, device=DEVICE),
                                 torch.randn(dim, device=DEVICE), 0.5 * torch.randn(dim, rank, device=DEVICE))


def reference(side: triton_pair.Direction, z: torch.Tensor, valid: int, reverse: bool) -> torch.Tensor:
    """The float64 reference scan of one direction, delta = W_dt dt with identity steps from ``valid`` on."""
    f64 = lambda t: t.double()  # noqa: E731
    delta = torch.einsum("dr,brl->bdl", f64(side.w_dt), f64(side.dt))
    delta[..., valid:] = float("-inf")
    return selective_scan(f64(side.u), delta, -torch.exp(f64(side.A_log)), f64(side.B), f64(side.C), f64(side.D),
                          f64(z), f64(side.delta_bias), True, backend="reference", reverse=reverse)


@pytest.mark.parametrize("chunk, unroll, n, length, valid", [
    (16, 1, 4, 48, 37),   # three chunks of one row each: the carried state in both directions
    (32, 2, 4, 48, 48),   # two rows per chunk (the scan across rows), the last chunk half past the end
    (64, 2, 3, 32, 20),   # odd state count: one state per pass; one chunk longer than the sequence
])
def test_pair_matches_float64_reference(chunk, unroll, n, length, valid):
    """``(y_forward + y_backward) / 2``, the z gate applied, within float32 rounding of the float64 reference."""
    torch.manual_seed(chunk + n)
    config = TritonConfig(1, chunk, 1, "serial", unroll=unroll)
    first, second = direction(2, 3, 5, n, length), direction(2, 3, 5, n, length)
    z = torch.randn(2, 3, length, device=DEVICE)
    with torch.no_grad():
        got = triton_pair.scan_pair(first, second, z, valid, config)
    want = (reference(first, z, valid, False) + reference(second, z, valid, True)) / 2
    assert got.dtype == torch.float32 and rel_err(got, want) < 1e-5


def test_pair_equals_two_launches():
    """The same as the two-launch path's ``(y_f + y_b) / 2`` but for the rounding of ``-exp(A_log)``, which the
    kernel computes (the averaging itself is exact); with z read through the in_proj output's batch stride (twice
    the channels), as the mixer passes it."""
    torch.manual_seed(1)
    config = TritonConfig(1, 32, 1, "serial")
    first, second = direction(2, 3, 5, 4, 48), direction(2, 3, 5, 4, 48)
    z = torch.randn(2, 6, 48, device=DEVICE)[:, 3:]
    with torch.no_grad():
        got = triton_pair.scan_pair(first, second, z, 41, config)
        one = [triton_ops.selective_scan_triton(s.u, None, -torch.exp(s.A_log), s.B, s.C, s.D, z.contiguous(),
                                                s.delta_bias, True, reverse, delta_proj=(s.w_dt, s.dt),
                                                valid_length=41, config=config)
               for s, reverse in ((first, False), (second, True))]
    assert rel_err(got, (one[0] + one[1]) / 2) < 1e-6


def test_pair_output_in_the_input_dtype():
    """bf16 activations (autocast's matmul outputs): float32 arithmetic, the output rounded once to bf16."""
    torch.manual_seed(2)
    first, second = (direction(1, 2, 3, 4, 32, torch.bfloat16) for _ in range(2))
    z = torch.randn(1, 2, 32, device=DEVICE).to(torch.bfloat16)
    with torch.no_grad():
        got = triton_pair.scan_pair(first, second, z, 32, TritonConfig(1, 16, 1, "serial"))
    want = (reference(first, z, 32, False) + reference(second, z, 32, True)) / 2
    assert got.dtype == torch.bfloat16 and rel_err(got.double(), want) < 1e-2


def test_pair_refuses_what_it_cannot_launch(serial):
    """Only the serial forward, on aligned lengths within 32-bit offsets; inputs with mismatched layouts are refused
    with the reason, not read with the wrong strides."""
    x = torch.zeros(2, 3, 32, device=DEVICE)
    config = TritonConfig(1, 16, 1, "serial")
    serial(config)
    assert triton_pair.mixer_config(x, 3, 13, 4) == config
    assert triton_pair.mixer_config(x[..., :20], 3, 13, 4) is None  # not a multiple of ALIGN
    assert triton_pair.mixer_config(x[:1].expand(2**23, -1, -1), 3, 13, 4) is None  # beyond 32-bit offsets
    serial(TritonConfig(1, 16, 1, "loop"))
    assert triton_pair.mixer_config(x, 3, 13, 4) == TritonConfig(1, 16, 1, "loop")  # two scans at that shape
    first, second = direction(2, 3, 5, 4, 32), direction(2, 3, 5, 4, 32)
    z = torch.randn(2, 3, 32, device=DEVICE)
    with pytest.raises(ValueError, match="'serial' forward"):
        triton_pair.scan_pair(first, second, z, 32, TritonConfig(1, 16, 1, "loop"))
    with pytest.raises(ValueError, match="share shape and strides"):
        triton_pair.scan_pair(first, second._replace(u=second.u.transpose(0, 1).contiguous().transpose(0, 1)), z, 32,
                              config)
    with pytest.raises(ValueError, match="share shape and strides"):
        triton_pair.scan_pair(first, second, z.transpose(0, 1).contiguous().transpose(0, 1), 32, config)
    with pytest.raises(ValueError, match="dt, B and C of both directions"):
        triton_pair.scan_pair(first, second._replace(B=second.B.contiguous()), z, 32, config)
    with pytest.raises(ValueError, match="A_log"):
        triton_pair.scan_pair(first, second._replace(w_dt=second.w_dt[:, :4]), z, 32, config)


@pytest.mark.parametrize("reverse", [False, True], ids=["first-block", "second-block"])
def test_mixer_inference_scans_both_directions_in_one_launch(monkeypatch, serial, reverse):
    """With the serial forward, the mixer's inference is one conv launch and one scan launch for both directions
    and no single-direction one, equal to the reference backend's mixer; training keeps the two of each, with
    gradients."""
    from ssamba.models import mamba
    from ssamba.models.scan import triton_conv

    mixer, reference_mixer = triton_and_reference_mixers(DEVICE, seed=6)
    x = torch.randn(2, 21, 4, device=DEVICE)  # padded to 32 steps
    pairs, singles, convs = [], [], []
    real_pair, real_single = triton_pair.scan_pair, mamba.selective_scan_triton
    real_conv_pair, real_conv = triton_conv.conv_silu_pair, triton_conv.conv_silu
    monkeypatch.setattr(triton_pair, "scan_pair", lambda *a: pairs.append(a) or real_pair(*a))
    monkeypatch.setattr(triton_conv, "conv_silu_pair", lambda *a: convs.append("pair") or real_conv_pair(*a))
    monkeypatch.setattr(triton_conv, "conv_silu", lambda *a: convs.append("single") or real_conv(*a))
    monkeypatch.setattr(mamba, "selective_scan_triton", lambda *a, **k: singles.append(a) or real_single(*a, **k))
    serial(TritonConfig(1, 16, 1, "serial", unroll=2))
    with torch.no_grad():
        got = mixer(x, reverse=reverse)
        want = reference_mixer(x, reverse=reverse)
    assert len(pairs) == 1 and not singles and convs == ["pair"]
    assert rel_err(got, want) < 1e-5
    trained = mixer(x, reverse=reverse)
    assert len(pairs) == 1 and len(singles) == 2 and convs == ["pair", "single", "single"]
    assert rel_err(trained.detach(), want) < 1e-5


def test_encoder_inference_on_pair_launches_equals_the_reference_backend(monkeypatch, serial):
    """A whole (small) SSAMBA encoder in inference with the serial launch shape: one pair launch per mixer inside
    the fused trunk (``triton_norms``), the output equal to the same weights on the reference backend."""
    from ssamba.models import build_encoder
    from ssamba.models.config import preset

    torch.manual_seed(7)
    sizes = dict(input_tdim=32, input_fdim=32, depth=2, embed_dim=8, d_state=4)
    encoder = build_encoder(preset("ssamba", "tiny", **sizes, scan_backend="triton")).to(DEVICE).eval()
    reference = build_encoder(preset("ssamba", "tiny", **sizes, scan_backend="reference")).to(DEVICE).eval()
    reference.load_state_dict(encoder.state_dict())
    from ssamba.models.scan import triton_norms

    pairs, norms = [], []
    real_pair, real_norms = triton_pair.scan_pair, triton_norms.add_norms
    monkeypatch.setattr(triton_pair, "scan_pair", lambda *a: pairs.append(a) or real_pair(*a))
    monkeypatch.setattr(triton_norms, "add_norms", lambda *a: norms.append(a) or real_norms(*a))
    serial(TritonConfig(1, 16, 1, "serial", unroll=2))
    x = torch.randn(2, 32, 32, device=DEVICE)
    with torch.no_grad():
        got = encoder(x)
        want = reference(x)
    assert len(pairs) == 2 and len(norms) == 2  # a pair's adds + norms, then the final norm
    assert rel_err(got, want) < 1e-5
