"""The built-in synthetic corpus: real files and manifests, determinism, audio properties, and evidence that its
classes need time-frequency structure (a time-averaged spectrum cannot tell temporal mirror images apart)."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssamba.audio import fbank_batch, features, load_audio
from ssamba.cli import main
from ssamba.data.manifest import read_class_labels, read_csv_manifest, read_json_manifest
from ssamba.data.synthetic import CLASS_NAMES, SAMPLE_RATE, labeled_clip, make_corpus, unlabeled_clip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_corpus(out, clips_per_class=7, unlabeled=20, duration=0.5, seed=3)
    return out


def _audio_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


def test_manifests_and_stratified_splits(corpus: Path) -> None:
    labels = read_class_labels(corpus / "class_labels_indices.csv")
    assert len(labels) == len(CLASS_NAMES) == 12 and labels.mids == CLASS_NAMES
    splits = {s: read_json_manifest(corpus / f"{s}.json")
              for s in ("train", "validation", "test", "unlabeled", "unlabeled_valid")}
    for split, per_class in (("train", 5), ("validation", 1), ("test", 1)):  # 7 clips: 5/1/1 per class
        assert Counter(e.labels[0] for e in splits[split]) == {c: per_class for c in CLASS_NAMES}
    assert len(splits["unlabeled"]) == 18 and len(splits["unlabeled_valid"]) == 2
    assert all(e.labels == () for s in ("unlabeled", "unlabeled_valid") for e in splits[s])
    all_csv = read_csv_manifest(corpus / "all.csv")
    assert len(all_csv) == 12 * 7 + 20 and len({e.path for e in all_csv}) == len(all_csv)
    assert all(Path(e.path).is_absolute() and Path(e.path).is_file() for e in all_csv)


def test_audio_properties_and_loader(corpus: Path) -> None:
    paths = [e.path for e in read_csv_manifest(corpus / "all.csv")]
    for path in paths:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 1, SAMPLE_RATE // 2)
    waveform, sr = load_audio(paths[0])
    assert sr == 16000 and waveform.shape == (1, 8000) and waveform.dtype == torch.float32
    assert torch.isfinite(waveform).all() and 0.25 < waveform.abs().max() <= 1.0
    assert features(waveform, sr, 64).shape == (64, 128)
    for clip in (labeled_clip("fm_tone", 0), unlabeled_clip(0)):
        assert clip.dtype == np.float32 and clip.shape == (16000,) and np.isfinite(clip).all()
        assert 0.3 <= np.abs(clip).max() <= 0.95  # random peak level in [0.3, 0.95]


def test_deterministic_per_seed(corpus: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    make_corpus(again, clips_per_class=7, unlabeled=20, duration=0.5, seed=3)
    make_corpus(other, clips_per_class=7, unlabeled=20, duration=0.5, seed=4)
    first = _audio_bytes(corpus)
    assert _audio_bytes(again) == first and len(first) == 104
    different = _audio_bytes(other)
    assert different.keys() == first.keys() and all(different[k] != first[k] for k in first)
    assert (again / "train.json").read_text() == (corpus / "train.json").read_text().replace(str(corpus), str(again))
    # a clip depends on (seed, class, index) only, not on how many clips are generated
    written = sf.read(str(corpus / "audio/chirp_up/chirp_up_0002.wav"), dtype="float32")[0]
    assert np.abs(labeled_clip("chirp_up", 2, seed=3, duration=0.5) - written).max() < 1 / 32767


def test_subset_and_bad_arguments(tmp_path: Path) -> None:
    report = make_corpus(tmp_path, clips_per_class=3, unlabeled=0, duration=0.2, classes=["noise_low", "chirp_up"])
    assert report.num_classes == 2 and report.split_counts == {"train": 2, "validation": 2, "test": 2}
    assert read_class_labels(tmp_path / "class_labels_indices.csv").mids == ("noise_low", "chirp_up")
    with pytest.raises(ValueError, match="classes must be distinct"):
        make_corpus(tmp_path, clips_per_class=3, unlabeled=0, classes=["meow"])
    with pytest.raises(ValueError, match="clips_per_class >= 1"):
        make_corpus(tmp_path, clips_per_class=0, unlabeled=0)


def test_cli_prepare_synthetic_without_root(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "synth"
    assert main(["prepare", "synthetic", "--out", str(out), "--clips-per-class", "3", "--unlabeled", "4",
                 "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "synthetic: 40 clips, 12 classes" in text and "unlabeled_valid: 1" in text
    assert len(read_json_manifest(out / "train.json")) == 12 and len(list(out.rglob("*.wav"))) == 40
    with caplog.at_level(logging.ERROR):
        assert main(["prepare", "esc50", "--out", str(tmp_path / "e")]) == 2
        assert main(["prepare", "esc50", "--root", str(tmp_path), "--out", str(tmp_path / "e"), "--seed", "1"]) == 2
    assert "'esc50' needs --root" in caplog.text and "takes no option(s) seed" in caplog.text


# --- separability: temporal mirror images have the same average spectrum -------------------------------------

def _logmel(name: str, count: int) -> np.ndarray:
    clips = np.stack([labeled_clip(name, i, seed=11) for i in range(count)])
    return fbank_batch(torch.from_numpy(clips)).numpy()  # (count, frames, 128)


def _mean_spectrum(logmel: np.ndarray) -> np.ndarray:
    """Time-averaged log-mel, level removed: all a bag-of-frames classifier sees."""
    return (logmel - logmel.mean(axis=(1, 2), keepdims=True)).mean(axis=1)


def _tf_autocorrelation(logmel: np.ndarray, lags: int = 48, shifts: int = 12, bands: int = 32) -> np.ndarray:
    """2-D autocorrelation of the energy above each band's noise floor at time lags 1..``lags`` and band shifts
    -``shifts``..``shifts``: invariant to onset and pitch, but it keeps which way energy moves in frequency."""
    n, frames, bins = logmel.shape
    above = np.maximum(logmel - np.median(logmel, axis=1, keepdims=True), 0)
    above = above.reshape(n, frames, bands, bins // bands).mean(axis=3)
    power = np.abs(np.fft.rfft2(above, s=(2 * frames, 2 * bands))) ** 2
    corr = np.fft.irfft2(power, s=(2 * frames, 2 * bands))[:, 1:lags + 1]
    corr = np.concatenate([corr[:, :, -shifts:], corr[:, :, :shifts + 1]], axis=2).reshape(n, -1)
    return corr / corr.std(axis=1, keepdims=True)


def _nearest_centroid_accuracy(train: list[np.ndarray], test: list[np.ndarray]) -> float:
    centroids = np.stack([x.mean(axis=0) for x in train])
    hits = [(((x[:, None] - centroids) ** 2).sum(-1).argmin(1) == c) for c, x in enumerate(test)]
    return float(np.concatenate(hits).mean())


@pytest.mark.parametrize("pair", [("chirp_up", "chirp_down"), ("tones_up", "tones_down")])
def test_temporal_order_needs_time_frequency_structure(pair: tuple[str, str]) -> None:
    half = 15
    logmels = [_logmel(name, 2 * half) for name in pair]
    accuracy = {}
    for kind, featurize in (("mean", _mean_spectrum), ("tf", _tf_autocorrelation)):
        feats = [featurize(x) for x in logmels]
        accuracy[kind] = _nearest_centroid_accuracy([f[:half] for f in feats], [f[half:] for f in feats])
    logging.getLogger(__name__).info("%s: %s", pair, accuracy)
    assert accuracy["mean"] <= 0.75, accuracy  # chance is 0.5: the average spectrum does not know the order
    assert accuracy["tf"] >= 0.85 and accuracy["tf"] - accuracy["mean"] >= 0.25, accuracy


def test_loudness_alone_does_not_separate_the_classes() -> None:
    """Peak normalisation to a random level leaves only the crest factor in the RMS (click trains are peaky), so
    a nearest-centroid classifier on RMS reaches ~0.25 over 12 classes (chance 1/12), far from separating them."""
    rms = np.array([[np.sqrt(np.mean(labeled_clip(name, i, seed=5) ** 2)) for i in range(20)]
                    for name in CLASS_NAMES])  # (classes, clips)
    centroids = rms[:, :10].mean(axis=1)
    predicted = np.abs(rms[:, 10:, None] - centroids).argmin(axis=-1)
    assert (predicted == np.arange(len(CLASS_NAMES))[:, None]).mean() < 0.4
