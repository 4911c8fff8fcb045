"""The sinc resampler against torchaudio 2.2.2's golden outputs (fixtures README: same algorithm, atol 1e-6)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from _audio_helpers import fixture

from ssamba.audio import resample
from ssamba.audio.resample import kernel_width, resampled_length, sinc_kernel

PAIRS = [(8000, 16000), (32000, 16000), (48000, 16000), (16000, 8000)]


def _outputs(suffix: str = "") -> list[tuple[str, str, int, int]]:
    """(output key, input key, orig, new) for every stored resampler output."""
    cases = []
    for key in fixture("resample"):
        if key.startswith("out_") and key.endswith(suffix) and (suffix or not key.endswith("_transform")):
            sig, orig, _, new = key[4:].removesuffix("_transform").split("_")
            cases.append((key, f"in_{sig}_{orig}", int(orig), int(new)))
    return cases


@pytest.mark.parametrize(("orig", "new"), PAIRS)
def test_kernels_and_widths_match_reference(orig: int, new: int) -> None:
    d = fixture("resample")
    kernel, width = sinc_kernel(orig, new)
    assert width == kernel_width(orig, new) == int(d[f"width_{orig}_to_{new}"])
    np.testing.assert_allclose(kernel.numpy(), d[f"kernel_{orig}_to_{new}"], rtol=0, atol=1e-7)
    transform, _ = sinc_kernel(orig, new, variant="transform")
    np.testing.assert_allclose(transform.numpy(), d[f"kernel_{orig}_to_{new}_transform"], rtol=0, atol=1e-7)


def test_functional_outputs_match_reference() -> None:
    d = fixture("resample")
    cases = _outputs()
    assert len(cases) == 22  # 3 signals x 6 rates, 2 downsampled, the identity, speech 16 -> 8 kHz
    worst = 0.0
    for out_key, in_key, orig, new in cases:
        got = resample(d[in_key], orig, new)
        assert got.dtype == torch.float32 and got.shape == d[out_key].shape, out_key
        worst = max(worst, float(np.abs(got.numpy() - d[out_key]).max()))
    assert worst <= 1e-6


def test_transform_variant_matches_transforms_resample() -> None:
    d = fixture("resample")
    cases = _outputs("_transform")
    assert len(cases) == 7
    for out_key, in_key, orig, new in cases:
        got = resample(torch.from_numpy(d[in_key]), orig, new, variant="transform")
        np.testing.assert_allclose(got.numpy(), d[out_key], rtol=0, atol=1e-6, err_msg=out_key)


def test_output_lengths_follow_the_reference_float32_rounding() -> None:
    table = fixture("resample")["length_table"]
    assert table.shape == (69, 5)
    for orig, new, length, reference, exact in table.tolist():
        assert resampled_length(length, orig, new) == reference, (orig, new, length)
    short = [row for row in table.tolist() if row[3] != row[4]]
    assert len(short) == 6  # the o'=441 trap rows: one sample below the exact ceiling
    for orig, new, length, reference, _ in short[:2] + table[:3].tolist():
        assert resample(torch.zeros(length), orig, new).shape[-1] == reference


def test_same_rate_is_the_identity() -> None:
    x = fixture("resample")["in_noise_16000"]
    assert torch.equal(resample(x, 16000, 16000), torch.from_numpy(x))


def test_batched_and_multichannel_inputs_resample_each_signal() -> None:
    d = fixture("resample")
    batch = torch.stack([torch.from_numpy(d[f"in_{sig}_48000"][:72000]) for sig in ("noise", "chirp")])
    out = resample(batch[None], 48000, 16000)  # (1, 2, N): any leading dims
    assert out.shape == (1, 2, 24000)
    for i, sig in enumerate(("noise", "chirp")):
        np.testing.assert_allclose(out[0, i].numpy(), d[f"out_{sig}_48000_to_16000"], rtol=0, atol=1e-6)


def test_dtype_follows_input_and_integer_pcm_is_scaled() -> None:
    d = fixture("resample")
    x64 = resample(d["in_speech_44100"].astype(np.float64), 44100, 16000)
    assert x64.dtype == torch.float64
    np.testing.assert_allclose(x64.numpy(), d["out_speech_44100_to_16000"], rtol=0, atol=1e-4)
    pcm = np.round(d["in_noise_8000"] * 32768).astype(np.int16)  # the input is on the PCM16 grid
    np.testing.assert_array_equal(resample(pcm, 8000, 16000).numpy(), resample(d["in_noise_8000"], 8000, 16000))


def test_bad_rates_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        resample(torch.zeros(10), 0, 16000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_reference() -> None:
    d = fixture("resample")
    got = resample(torch.from_numpy(d["in_speech_48000"]).cuda(), 48000, 16000)
    assert got.is_cuda
    np.testing.assert_allclose(got.cpu().numpy(), d["out_speech_48000_to_16000"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("orig, new", [(1601, 1600), (1600, 1601), (441, 160)])
def test_direct_evaluation_equals_the_float64_polyphase_kernel(orig: int, new: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3001, generator=torch.Generator().manual_seed(0))
    exact = resample(x.double(), orig, new)  # the polyphase kernel in float64
    module = importlib.import_module("ssamba.audio.resample")  # the package exports the function by that name
    monkeypatch.setattr(module, "MAX_POLYPHASE_TAPS", 0)  # force the per-output evaluation
    direct = resample(x, orig, new)
    assert direct.dtype == torch.float32 and direct.shape == exact.shape
    torch.testing.assert_close(direct.double(), exact, rtol=0, atol=1e-6)


def test_rates_with_a_small_gcd_resample_without_a_huge_kernel() -> None:
    # 16001 Hz: a polyphase kernel of 16000 x 16015 taps (1 GB); evaluated per output sample instead
    x = torch.sin(torch.arange(16001) * (2 * np.pi * 440 / 16001))
    y = resample(x, 16001, 16000)
    assert y.shape == (resampled_length(16001, 16001, 16000),) == (16000,)
    reference = torch.sin(torch.arange(16000, dtype=torch.float64) * (2 * np.pi * 440 / 16000))
    assert float((y[100:-100].double() - reference[100:-100]).abs().max()) < 1e-3  # the same 440 Hz tone
