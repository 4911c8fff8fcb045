"""HEAR 2021 API conformance, checked the way hear-validator checks it (it cannot be installed beside our torch):
module functions and model attributes, shapes and dtypes, regular monotone timestamps in ms inside the audio,
batches of different sounds, a 20-minute input in bounded memory, and the default hub model when offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _inference_helpers import PRETRAIN, one_thread, shallow_copy, tone  # noqa: F401

import ssamba.hear as hear
from ssamba.inference.hear import interpolate_columns
from ssamba.hub import HubError

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Two blocks of the official pretrained SSAMBA-tiny (patch stride 16: a timestamp every 160 ms)."""
    return shallow_copy(PRETRAIN, tmp_path_factory.mktemp("m") / "shallow")


@pytest.fixture(scope="module")
def model(model_dir):
    return hear.load_model(str(model_dir))


def white_noise(num: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((num, int(seconds * 16000)), generator=g) * 2 - 1  # as the validator makes its audio


def test_module_api_and_model_attributes(model):
    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        assert callable(getattr(hear, name))
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000 and model.sample_rate in (16000, 22050, 32000, 44100, 48000)
    assert isinstance(model.scene_embedding_size, int) and model.scene_embedding_size == 192
    assert isinstance(model.timestamp_embedding_size, int) and model.timestamp_embedding_size == 192
    assert model.to("cpu") is model


@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0])
def test_timestamp_embeddings_as_the_validator_checks_them(model, seconds):
    audio = white_noise(2, seconds)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.ndim == 3 and ts.ndim == 2 and emb.shape[0] == 2 and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    ts = ts.numpy()
    diff = np.diff(ts)
    assert (diff > 0).all() and np.abs(diff - diff.mean()).max() <= 1.0  # regular, monotone
    assert diff.mean() == pytest.approx(40.0)  # HEAR's <= 50 ms: the 160 ms columns, interpolated 4x
    assert ts.min() <= 160 and ts.max() <= 1000 * seconds  # starts at once, never past the audio
    assert ts.max() >= 1000 * seconds - 160  # and reaches its last column
    assert np.array_equal(ts[0], ts[1])
    assert not torch.allclose(emb[0], emb[1])  # two different sounds


def test_scene_embeddings_for_a_batch_of_different_sounds(model):
    sounds = torch.stack([torch.from_numpy(tone(2.74, freq=f, seed=k)) for k, f in enumerate((220, 880, 3000))]
                         + [white_noise(1, 2.74)[0]])
    scene = hear.get_scene_embeddings(sounds, model)
    assert scene.dtype == torch.float32 and scene.shape == (4, model.scene_embedding_size)
    distances = torch.cdist(scene, scene)
    assert (distances + torch.eye(4) * 1e9).min() > 1e-2  # all four differ
    emb, _ = hear.get_timestamp_embeddings(sounds, model)
    torch.testing.assert_close(scene, emb[:, ::4].mean(1), atol=1e-6, rtol=1e-5)  # the mean of the columns
    for k in range(4):  # a sound's embedding does not depend on its batch
        alone = hear.get_scene_embeddings(sounds[k:k + 1], model)
        torch.testing.assert_close(alone[0], scene[k], atol=1e-6, rtol=0)


def test_timestamps_interpolate_the_columns_onto_hears_50_ms_grid(model_dir, model):
    audio = white_noise(1, 2.0)
    native = hear.load_model(str(model_dir), max_timestamp_hop_ms=None)
    columns, stamps = hear.get_timestamp_embeddings(audio, native)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert np.diff(stamps[0].numpy()).mean() == pytest.approx(160.0) and columns.shape[1] == 12
    assert emb.shape[1] == 4 * 11 + 1 and torch.equal(ts[0, ::4], stamps[0])
    assert torch.equal(emb[0, ::4], columns[0])  # every 4th stamp is a column, unchanged
    torch.testing.assert_close(emb[0, 1], 0.75 * columns[0, 0] + 0.25 * columns[0, 1])  # linear in between
    torch.testing.assert_close(emb[0, 2], (columns[0, 0] + columns[0, 1]) / 2)
    # a stride-10 model's 100 ms columns get a 50 ms grid; a hop already fine enough is left alone
    values = torch.randn(5, 3)
    out, at = interpolate_columns(values, 87.5 + 100.0 * torch.arange(5, dtype=torch.float64), 50.0)
    assert out.shape == (9, 3) and torch.equal(at, 87.5 + 50.0 * torch.arange(9, dtype=torch.float64))
    assert interpolate_columns(values, 87.5 + 40.0 * torch.arange(5, dtype=torch.float64), 50.0)[0] is values
    with pytest.raises(ValueError, match="max_timestamp_hop_ms must be positive"):
        hear.load_model(str(model_dir), max_timestamp_hop_ms=0)


def test_audio_shorter_than_a_column_centre_is_stamped_inside_it(model):
    """Audio of 30-87 ms has one column, centred at 87.5 ms past its end: its stamp is the audio's middle."""
    for samples in (480, 800, 1399):
        emb, ts = hear.get_timestamp_embeddings(white_noise(1, samples / 16000), model)
        assert emb.shape[1] == 1 and ts[0, 0] == pytest.approx(samples / 32)  # the middle, in ms
    _, ts = hear.get_timestamp_embeddings(white_noise(1, 0.1), model)
    assert ts[0, 0] == 87.5


def test_bad_audio_is_refused(model):
    with pytest.raises(ValueError, match=r"\(n_sounds, n_samples\)"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(ValueError, match="NaN or infinite"):
        hear.get_scene_embeddings(torch.full((1, 16000), float("nan")), model)
    with pytest.raises(ValueError, match="shorter than one 25 ms analysis window"):
        hear.get_timestamp_embeddings(torch.zeros(1, 100), model)
    loud = white_noise(2, 1.0)
    loud[1] *= 1e30  # finite samples whose log-mel is not: refused, not returned as NaN embeddings
    with pytest.raises(ValueError, match=r"HEAR sound 1: the model's output is not finite \(peak amplitude 1e\+30"):
        hear.get_scene_embeddings(loud, model)


def test_no_sounds_give_empty_results(model):
    embeddings, stamps = hear.get_timestamp_embeddings(torch.zeros(0, 16000), model)
    assert embeddings.shape == (0, 0, model.timestamp_embedding_size) and stamps.shape == (0, 0)
    assert embeddings.dtype == stamps.dtype == torch.float32
    assert hear.get_scene_embeddings(torch.zeros(0, 16000), model).shape == (0, model.scene_embedding_size)


def test_default_model_comes_from_the_hub_and_offline_says_so(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HubError, match="ssamba_tiny_400.pth .*HF_HUB_OFFLINE is set"):
        hear.load_model()


SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(1)
from ssamba.bench.memory import current_rss_bytes, peak_rss_bytes
import ssamba.hear as hear
from ssamba.inference.hear import interpolate_columns
model = hear.load_model(sys.argv[1], batch_size=4)
audio = torch.rand((1, 20 * 60 * 16000), generator=torch.Generator().manual_seed(0)) * 2 - 1
before = current_rss_bytes()
emb, ts = hear.get_timestamp_embeddings(audio, model)
print(json.dumps({"shape": list(emb.shape), "ts_shape": list(ts.shape), "first": float(ts[0, 0]),
                  "last": float(ts[0, -1]), "finite": bool(torch.isfinite(emb).all()),
                  "growth_mb": (peak_rss_bytes() - before) / 2**20}))
"""


def test_twenty_minutes_in_bounded_memory(model_dir):
    """The whole 20 minutes go through the model (24 windows of 60 s); a fresh process measures the peak RSS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [1, 29997, 192] and out["ts_shape"] == [1, 29997] and out["finite"]  # 7500 columns
    assert out["first"] == 87.5 and out["last"] == pytest.approx(87.5 + 160 * 7499)
    assert out["growth_mb"] < 2048, out  # measured ~0.5 GB; 20 minutes of float32 audio alone is 73 MB
