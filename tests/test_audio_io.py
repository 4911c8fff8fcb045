"""Loading: formats, scale, mono policy, and every kind of bad file named in the error."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _audio_helpers import write_tone

from ssamba.audio import AudioLoadError, features, load_audio, resample
from ssamba.audio.fbank import num_frames
from ssamba.audio.resample import resampled_length
from ssamba.audio.stats import AUDIOSET


def test_pcm16_is_scaled_like_torchaudio(tmp_path: Path) -> None:
    pcm = np.array([0, 1, -1, 32767, -32768, 12345], dtype=np.int16)
    sf.write(str(tmp_path / "a.wav"), pcm, 16000, subtype="PCM_16")
    waveform, sr = load_audio(tmp_path / "a.wav")
    assert sr == 16000 and waveform.dtype == torch.float32 and waveform.shape == (1, 6)
    np.testing.assert_array_equal(waveform[0].numpy(), pcm.astype(np.float32) / 32768)


@pytest.mark.parametrize(("suffix", "subtype", "atol"), [(".flac", "PCM_16", 0.0), (".wav", "FLOAT", 0.0),
                                                         (".ogg", "VORBIS", 0.05), (".mp3", "MPEG_LAYER_III", 0.05)])
def test_formats(tmp_path: Path, suffix: str, subtype: str, atol: float) -> None:
    if subtype not in sf.available_subtypes(suffix[1:].upper()):
        pytest.skip(f"libsndfile here cannot write {subtype}")
    written = write_tone(tmp_path / f"tone{suffix}", seconds=0.5, sr=16000, subtype=subtype)
    waveform, sr = load_audio(tmp_path / f"tone{suffix}")
    assert sr == 16000 and waveform.dtype == torch.float32 and waveform.shape[0] == 1
    if atol == 0.0:
        expected = written[:, 0].astype(np.float32)
        if subtype == "PCM_16":
            expected = np.round(expected * 32768).astype(np.int16) / np.float32(32768)
        np.testing.assert_array_equal(waveform[0].numpy(), expected)
    else:  # lossy codecs: same length within a frame, and the tone's energy survives
        assert abs(waveform.shape[1] - 8000) <= 2304
        assert abs(float(waveform.pow(2).mean().sqrt()) - 0.3 / np.sqrt(2)) < atol


def test_five_channels_mono_policies(tmp_path: Path) -> None:
    written = write_tone(tmp_path / "five.wav", seconds=0.1, channels=5, subtype="FLOAT")
    first, _ = load_audio(tmp_path / "five.wav")
    np.testing.assert_array_equal(first[0].numpy(), written[:, 0].astype(np.float32))
    mean, _ = load_audio(tmp_path / "five.wav", mono="mean")
    np.testing.assert_allclose(mean[0].numpy(), written.astype(np.float32).mean(axis=1), rtol=0, atol=1e-7)
    every, _ = load_audio(tmp_path / "five.wav", mono=None)
    assert every.shape == (5, 1600)
    with pytest.raises(ValueError, match="mono policy"):
        load_audio(tmp_path / "five.wav", mono="left")  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [8000, 48000])
def test_other_rates_load_natively_and_are_resampled_on_request(tmp_path: Path, rate: int) -> None:
    write_tone(tmp_path / "x.wav", seconds=1.0, sr=rate)
    native, sr = load_audio(tmp_path / "x.wav")
    assert sr == rate and native.shape == (1, rate)
    converted, sr16 = load_audio(tmp_path / "x.wav", sample_rate=16000)
    assert sr16 == 16000 and converted.shape == (1, resampled_length(rate, rate, 16000)) == (1, 16000)
    torch.testing.assert_close(converted, resample(native, rate, 16000), rtol=0, atol=0)
    x = features(native, sr, 128, AUDIOSET.mean, AUDIOSET.std)
    assert x.shape == (128, 128)
    # a 440 Hz tone at any input rate lands in the same mel bin once resampled to 16 kHz
    assert int(x[: num_frames(16000)].mean(0).argmax()) == int(
        features(resample(native, rate, 16000), 16000, 128, AUDIOSET.mean, AUDIOSET.std)[:98].mean(0).argmax())


def test_ten_samples_load_and_give_one_frame(tmp_path: Path) -> None:
    write_tone(tmp_path / "tiny.wav", seconds=10 / 16000)
    waveform, _ = load_audio(tmp_path / "tiny.wav")
    assert waveform.shape == (1, 10)
    x = features(waveform, 16000, 16, AUDIOSET.mean, AUDIOSET.std)  # short policy "pad": one zero-padded window
    assert torch.isfinite(x).all() and not (x[0] == np.float32(0.46703237)).all()
    assert (x[1:] == np.float32(0.46703237)).all()  # the rest is padding


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    with pytest.raises(AudioLoadError, match="not a readable audio file") as info:
        load_audio(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_non_audio_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.flac"
    path.write_text("these are not samples\n" * 20)
    with pytest.raises(AudioLoadError, match=f"{path}: not a readable audio file"):
        load_audio(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(AudioLoadError, match=f"{path}: empty file"):
        load_audio(path)


def test_header_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "nosamples.wav"
    sf.write(str(path), np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioLoadError, match=f"{path}: contains no audio samples"):
        load_audio(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioLoadError, match="gone.wav: file not found"):
        load_audio(tmp_path / "gone.wav")


def test_nan_samples_are_rejected_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    data = np.full(1600, 0.1, np.float32)
    data[[5, 700]] = np.nan
    data[9] = np.inf
    sf.write(str(path), data, 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match=f"{path}: 3 of 1600 samples are NaN or infinite"):
        load_audio(path)
    waveform, _ = load_audio(path, allow_nonfinite=True)
    assert int(torch.isnan(waveform).sum()) == 2 and int(torch.isinf(waveform).sum()) == 1


def test_float_file_beyond_full_scale_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "loud.wav"
    sf.write(str(path), np.full(400, 3000.0, np.float32), 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="ssamba.audio.io"):
        waveform, _ = load_audio(path)
    assert float(waveform.max()) == 3000.0  # returned as stored, not clipped
    assert str(path) in caplog.text and "exceeds 1.0" in caplog.text


def test_models_import_without_soundfile_and_audio_io_says_what_is_missing(tmp_path: Path) -> None:
    """``import ssamba`` (models, benchmarks) works where libsndfile is missing, as on the GPU machines; reading audio
    there fails with an error that names the package, not at import time."""
    import subprocess
    import sys

    write_tone(tmp_path / "a.wav", seconds=0.1)
    code = (
        "import sys; sys.modules['soundfile'] = None\n"  # importing it now raises ImportError
        "import ssamba, ssamba.models\n"
        "from ssamba.audio import load_audio\n"
        f"try:\n    load_audio({str(tmp_path / 'a.wav')!r})\n"
        "except ImportError as exc:\n    print('ERROR', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERROR reading and writing audio needs the 'soundfile' package" in proc.stdout


def test_files_are_decoded_block_by_block_into_the_same_samples(tmp_path: Path, monkeypatch) -> None:
    """load_audio reduces each decoded block to its mono policy (an hour of 44.1 kHz stereo once took ~4 GB just
    to load): with blocks of 1000 frames the result is the whole-file read, for every policy and format."""
    from ssamba.audio import io

    rng = np.random.default_rng(0)
    data = (0.3 * rng.standard_normal((4321, 3))).astype(np.float32)
    for name, subtype in (("a.wav", "FLOAT"), ("a.flac", "PCM_16")):
        sf.write(tmp_path / name, data, 16000, subtype=subtype)
        whole, _ = sf.read(tmp_path / name, dtype="float32", always_2d=True)
        monkeypatch.setattr(io, "READ_BLOCK_FRAMES", 1000)
        for mono, expected in (("first", whole[:, :1].T), ("mean", whole.mean(1, keepdims=True).T), (None, whole.T)):
            got, sr = load_audio(tmp_path / name, mono=mono)
            assert sr == 16000 and got.shape == expected.shape
            np.testing.assert_allclose(got.numpy(), expected, atol=1e-7, rtol=0)
        monkeypatch.undo()
    bad = data.copy()
    bad[[10, 2500, 4000], 1] = np.nan  # in three different blocks
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    monkeypatch.setattr(io, "READ_BLOCK_FRAMES", 1000)
    # judged on the channels the policy keeps: channel 1's NaNs spoil its mean and the whole file, not channel 0
    np.testing.assert_array_equal(load_audio(tmp_path / "nan.wav")[0].numpy(), bad[:, :1].T)
    with pytest.raises(AudioLoadError, match="3 of 4321 samples are NaN or infinite"):
        load_audio(tmp_path / "nan.wav", mono="mean")
    with pytest.raises(AudioLoadError, match="3 of 12963 samples are NaN or infinite"):
        load_audio(tmp_path / "nan.wav", mono=None)
    with pytest.raises(ValueError, match="mono policy must be 'first', 'mean' or None, got 'left'"):
        load_audio(tmp_path / "a.wav", mono="left")
