"""The whole evaluation pipeline against the reference (fixtures README: pipeline.npz) and its structure."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _audio_helpers import fixture

from ssamba.audio import FeatureConfig, features, features_batch, fbank
from ssamba.audio.features import features_from_config, fit_length, normalize
from ssamba.audio.stats import AUDIOSET, ESC50

OUTPUTS = [(case, name) for case in ("speech_16k", "mix_10s", "chirp_3s") for name in ("audioset", "esc50")]
PAD_VALUE = {"audioset": np.float32(0.46703237), "esc50": np.float32(0.6183493)}


@pytest.mark.parametrize(("case", "name"), OUTPUTS)
def test_pipeline_matches_reference(case: str, name: str) -> None:
    d = fixture("pipeline")
    length = int(d[f"target_length_{case}"])
    mean, std = d[f"stats_{name}"].tolist()
    ref = d[f"out_{case}_t{length}_{name}"]
    got = features(d[f"in_{case}"], 16000, length, mean, std)
    assert got.shape == ref.shape == (length, 128) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=2.5e-3)  # independent of the CPU's MKL path
    frames = fbank(d[f"in_{case}"]).shape[0]
    if frames < length:  # padded rows are -mean/(2 std), exactly
        assert (got[frames:] == PAD_VALUE[name]).all()
        np.testing.assert_array_equal(ref[frames:], PAD_VALUE[name])
    else:  # cut: the first target_length frames, normalised
        np.testing.assert_array_equal(got.numpy(), normalize(fbank(d[f"in_{case}"])[:length], mean, std).numpy())


def test_presets_are_the_fixture_statistics() -> None:
    d = fixture("pipeline")
    assert (AUDIOSET.mean, AUDIOSET.std) == tuple(d["stats_audioset"].tolist())
    assert (ESC50.mean, ESC50.std) == tuple(d["stats_esc50"].tolist())


def test_resampling_happens_first_for_other_rates() -> None:
    """8 kHz input is resampled to 16 kHz (the official loader would have squeezed 128 bins into 4 kHz)."""
    d = fixture("resample")
    got = features(d["in_speech_8000"], 8000, 400, None, None)
    ref = fbank(d["out_speech_8000_to_16000"])  # the reference resampler's output through our fbank
    assert ref.shape == (289, 128)
    torch.testing.assert_close(got[:289], ref, rtol=0, atol=1e-4)
    assert (got[289:] == 0).all()  # unnormalised padding is 0 in the log-mel domain


def test_fit_length_pads_with_zero_and_cuts_from_the_end() -> None:
    x = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(fit_length(x, 5), torch.cat([x, torch.zeros(2, 4)]))
    assert torch.equal(fit_length(x, 2), x[:2])
    assert torch.equal(fit_length(x[None], 3), x[None])


def test_batch_equals_single_clips() -> None:
    d = fixture("pipeline")
    clips = np.stack([d["in_speech_16k"][:40000], d["in_mix_10s"][:40000]])
    out = features_batch(clips, 16000, 300, AUDIOSET.mean, AUDIOSET.std)
    assert out.shape == (2, 300, 128)
    for i in range(2):
        torch.testing.assert_close(out[i], features(clips[i], 16000, 300, AUDIOSET.mean, AUDIOSET.std),
                                   rtol=0, atol=1e-5)


def test_config_and_unpadded_output() -> None:
    x = fixture("pipeline")["in_chirp_3s"]
    config = FeatureConfig(target_length=128, mean=ESC50.mean, std=ESC50.std)
    torch.testing.assert_close(features_from_config(x, 16000, config), features(x, 16000, 128, ESC50.mean, ESC50.std))
    raw = features_from_config(x, 16000, FeatureConfig(target_length=128, normalize=False))
    torch.testing.assert_close(raw, fbank(x)[:128])
    assert features(x, 16000, None, None, None).shape == (298, 128)
    assert torch.equal(features(x[None], 16000, 128), features(x, 16000, 128))  # (1, samples) is one clip
    with pytest.raises(ValueError, match=r"one mono clip .* got shape \(2, "):
        features(np.stack([x, x]), 16000)  # two channels are not silently one clip, nor a batch
    with pytest.raises(ValueError, match="std"):
        FeatureConfig(std=0.0)
    with pytest.raises(ValueError, match="target_length"):
        FeatureConfig(target_length=0)
