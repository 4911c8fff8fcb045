"""The Kaldi-compatible fbank against torchaudio 2.2.2's golden outputs (tolerances from the fixtures README)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _audio_helpers import fixture

from ssamba.audio import fbank, fbank_batch, num_frames
from ssamba.audio.fbank import LOG_FLT_EPSILON, empty_mel_bins, mel_banks, windowed_frames

CASES = [c for c in fixture("fbank")["cases"].tolist() if c != "len300"]
#: "independent implementation" tolerances: float32 FFT/log results differ between CPU code paths
LOOSE = {"chirp_3s": 2e-2, "mix_10s": 2e-2}


def _check_case(got: torch.Tensor, case: str) -> None:
    ref = fixture("fbank")[f"out_{case}"]
    assert got.shape == ref.shape, case  # frame counts are exact
    diff = np.abs(got.numpy() - ref)
    assert diff.max() <= LOOSE.get(case, 2e-3), (case, diff.max())
    assert diff.mean() <= 5e-4, (case, diff.mean())


def test_mel_matrix_matches_reference_and_keeps_its_empty_filters() -> None:
    d = fixture("melbank")
    for sr, empty in ((16000, [3]), (8000, [4, 7, 12, 17])):
        ours = mel_banks(sr).numpy()
        ref = d[f"mel_banks_{sr}_with_nyquist"]
        assert ours.shape == ref.shape == (128, 512 * sr // 32000 + 1)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5)
        assert empty_mel_bins(sr) == empty == d[f"empty_bins_{sr}"].tolist()
        assert not ours[empty].any() and not ours[:, -1].any()  # empty rows and the Nyquist column are exactly 0


def test_window_and_frame_preparation_match_reference_exactly() -> None:
    d = fixture("melbank")
    np.testing.assert_array_equal(torch.hann_window(400, periodic=False).numpy(), d["window_hanning_400"])
    x = torch.from_numpy(d["debug_in_len560"])[None]
    np.testing.assert_array_equal(windowed_frames(x - x.mean())[0].numpy(), d["debug_frames_windowed_padded"])
    np.testing.assert_allclose(fbank(d["debug_in_len560"]).numpy(), d["debug_logmel"], rtol=0, atol=2e-3)


@pytest.mark.parametrize("case", CASES)
def test_fbank_matches_reference_with_stored_mean(case: str) -> None:
    d = fixture("fbank")
    got = fbank(d[f"in_{case}"], int(d[f"sr_{case}"]), mean=d[f"mean_{case}"])
    _check_case(got, case)
    empty = [3] if int(d[f"sr_{case}"]) == 16000 else [4, 7, 12, 17]
    assert (got[:, empty] == np.float32(LOG_FLT_EPSILON)).all()  # the constant columns, bit-exact


@pytest.mark.parametrize("case", ["noise_2s", "speech_16k", "mix_10s", "speech_8k"])
def test_fbank_matches_reference_with_recomputed_mean(case: str) -> None:
    d = fixture("fbank")
    _check_case(fbank(torch.from_numpy(d[f"in_{case}"])[None], int(d[f"sr_{case}"])), case)


def test_frame_count_formula() -> None:
    assert [num_frames(n) for n in (399, 400, 559, 560, 16000, 160000)] == [0, 1, 1, 2, 98, 998]
    assert num_frames(23269, 8000) == 289


def test_silence_is_the_log_epsilon_floor_everywhere() -> None:
    got = fbank(np.zeros(16000, np.float32))
    assert got.shape == (98, 128)
    assert (got == np.float32(-15.942384719848633)).all()


def test_int16_scale_input_shifts_by_2_ln_32768() -> None:
    d = fixture("fbank")
    offset = (fbank(d["in_noise_2s_x32768"], mean=d["mean_noise_2s_x32768"])
              - fbank(d["in_noise_2s"], mean=d["mean_noise_2s"]))
    assert (offset[:, 3] == 0).all()
    others = torch.cat([offset[:, :3], offset[:, 4:]], dim=1)
    assert torch.allclose(others, torch.full_like(others, 2 * np.log(32768)), rtol=0, atol=1e-4)
    # integer PCM, by contrast, is scaled to [-1, 1] on the way in
    pcm = np.round(d["in_noise_2s"] * 32768).astype(np.int16)
    np.testing.assert_array_equal(fbank(pcm).numpy(), fbank(d["in_noise_2s"]).numpy())


def test_short_clip_policies() -> None:
    clip = fixture("fbank")["in_len300"]  # 300 samples: the reference raises
    centred = torch.from_numpy(clip) - torch.from_numpy(clip).double().mean().float()
    padded = fbank(torch.nn.functional.pad(centred, (0, 100)), mean=0.0)
    got = fbank(clip)  # default "pad": zero-pad the mean-removed clip to one window
    assert got.shape == (1, 128) and torch.isfinite(got).all()
    torch.testing.assert_close(got, padded, rtol=0, atol=0)
    assert fbank(clip, short="empty").shape == (0, 128)
    with pytest.raises(ValueError, match="shorter than one 400-sample window"):
        fbank(clip, short="raise")
    assert fbank(np.zeros(10, np.float32)).shape == (1, 128)


def test_batch_equals_single_clips() -> None:
    d = fixture("fbank")
    batch = np.stack([d["in_noise_2s"], d["in_chirp_3s"][:32000], d["in_mix_10s"][:32000]])
    out = fbank_batch(batch)
    assert out.shape == (3, 198, 128)
    for i in range(3):
        torch.testing.assert_close(out[i], fbank(batch[i]), rtol=0, atol=1e-5)


def test_multichannel_input_needs_an_explicit_policy() -> None:
    with pytest.raises(ValueError, match="mono policy"):
        fbank(np.zeros((2, 1000), np.float32))


def test_float64_input_stays_float64_and_close() -> None:
    d = fixture("fbank")
    got = fbank(d["in_speech_16k"].astype(np.float64), mean=float(d["mean_speech_16k"]))
    assert got.dtype == torch.float64
    _check_case(got.float(), "speech_16k")


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="bit parity is defined on MKL's SSE4.2 path")
def test_bit_level_parity_on_the_reference_cpu_path() -> None:
    """With MKL on the code path the fixtures were made on, our op order reproduces the reference to float32
    rounding: README tolerances fbank 1e-5 (stored mean), pipeline 2e-6 (stored mean) / 1e-4 (recomputed mean)."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tests), *sys.path])}
    run = subprocess.run([sys.executable, str(tests / "_strict_parity.py")], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    assert errors["mel_16000"] == 0.0 and errors["mel_8000"] == 0.0
    fbank_errors = {k: v for k, v in errors.items() if k.startswith("fbank_")}
    assert len(fbank_errors) == 10 and max(fbank_errors.values()) <= 1e-5, fbank_errors
    stored = {k: v for k, v in errors.items() if k.startswith("pipeline_stored_mean_")}
    assert len(stored) == 6 and max(stored.values()) <= 2e-6, stored
    recomputed = {k: v for k, v in errors.items() if k.startswith("pipeline_") and k not in stored}
    assert len(recomputed) == 6 and max(recomputed.values()) <= 1e-4, recomputed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_reference() -> None:
    d = fixture("fbank")
    got = fbank_batch(torch.from_numpy(d["in_mix_10s"])[None].cuda(), mean=float(d["mean_mix_10s"]))[0]
    assert got.is_cuda and (got[:, 3] == np.float32(LOG_FLT_EPSILON)).all()
    _check_case(got.cpu(), "mix_10s")
