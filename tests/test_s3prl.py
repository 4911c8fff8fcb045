"""The s3prl ``UpstreamExpert`` contract, without s3prl: a list of unpadded 16 kHz waveforms in, a dict with
``hidden_states`` (every layer, ``(batch, max_len, dim)`` padded) out, lengths consistent with
``get_downsample_rates`` within s3prl's tolerance, and each clip's states independent of its batch."""
from __future__ import annotations

import math
import sys

import pytest
import torch
from _inference_helpers import PRETRAIN, one_thread, shallow_copy, tone  # noqa: F401

from ssamba.inference.s3prl import UpstreamExpert, ssamba_local
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERABLE_SEQLEN_DIFF = 3  # what s3prl's upstream checks allow


@pytest.fixture(scope="module")
def ssamba_dir(tmp_path_factory):
    return shallow_copy(PRETRAIN, tmp_path_factory.mktemp("m") / "ssamba")


@pytest.fixture(scope="module")
def ssast_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(preset("ssast", "tiny", depth=2, input_tdim=128, fstride=10, tstride=10),
                         task="classify", label_dim=3)
    return AudioClassifier(config).save_pretrained(tmp_path_factory.mktemp("m") / "ssast")


def wavs() -> list[torch.Tensor]:
    return [torch.from_numpy(tone(s, freq=f, seed=k)) for k, (s, f) in enumerate([(1.0, 300), (2.7, 800), (0.05, 2e3)])]


@pytest.mark.parametrize("which, layers, rate", [("ssamba_dir", 2, 2560), ("ssast_dir", 3, 1600)])
def test_hidden_states_contract(which, layers, rate, request):
    upstream = UpstreamExpert(str(request.getfixturevalue(which)))
    assert "s3prl" not in sys.modules and isinstance(upstream, torch.nn.Module)
    assert upstream.get_downsample_rates("hidden_states") == rate
    batch = wavs()
    out = upstream(batch)
    hidden = out["hidden_states"]
    assert isinstance(hidden, list) and len(hidden) == layers  # each layer's states, then the final output
    longest = max(len(w) for w in batch)
    assert all(h.shape == (3, hidden[0].shape[1], 192) and h.dtype == torch.float32 for h in hidden)
    assert abs(hidden[0].shape[1] - math.ceil(longest / rate)) <= TOLERABLE_SEQLEN_DIFF
    assert torch.equal(out["last_hidden_state"], hidden[-1])
    for k, w in enumerate(batch):
        valid = max(1, math.ceil(len(w) / rate) - 1)
        alone = upstream([w])["hidden_states"]
        n = alone[0].shape[1]
        assert abs(n - valid) <= TOLERABLE_SEQLEN_DIFF and n >= round(len(w) / rate)
        for h, a in zip(hidden, alone):
            torch.testing.assert_close(h[k, :n], a[0], atol=1e-5, rtol=0)
            assert torch.count_nonzero(h[k, n:]) == 0  # zero padding past the clip
    assert not torch.allclose(hidden[-1][0, :5], hidden[-1][1, :5])


def test_options_from_a_yaml_model_config(ssamba_dir, tmp_path):
    config = tmp_path / "upstream.yaml"
    config.write_text("stats: speechcommands\nbatch_size: 1\n")
    upstream = ssamba_local(str(ssamba_dir), str(config))
    assert upstream.clip_encoder.stats.mean == pytest.approx(-6.845978) and upstream.clip_encoder.batch_size == 1
    config.write_text("layers: 3\n")
    with pytest.raises(ValueError, match=r"unknown upstream options \['layers'\]"):
        UpstreamExpert(str(ssamba_dir), str(config))
    with pytest.raises(ValueError, match="at least 400 samples"):
        upstream([torch.zeros(100)])


def test_every_step_s3prl_keeps_is_a_feature_not_padding(ssamba_dir):
    """s3prl keeps round(samples / rate) steps per clip. A 26,931-sample clip has 10 columns centred in its audio
    but s3prl keeps 11: the 11th repeats the 10th, and is never a zero padding row of the batch."""
    upstream = UpstreamExpert(str(ssamba_dir))
    short, long = (torch.from_numpy(tone(n / 16000, freq=500.0, seed=k)) for k, n in enumerate((26931, 80000)))
    kept = round(len(short) / upstream.get_downsample_rates())
    hidden = upstream([short, long])["hidden_states"]
    alone = upstream([short])["hidden_states"]
    assert kept == 11 and alone[0].shape[1] == 11
    for h, a in zip(hidden, alone):
        assert torch.equal(h[0, :kept], a[0]) and torch.count_nonzero(h[0, :kept], dim=-1).min() > 0
        assert torch.equal(a[0, 10], a[0, 9]) and torch.count_nonzero(h[0, kept:]) == 0
