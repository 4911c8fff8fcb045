"""The manifest Dataset: official eval output, augmentation, worker-safe seeding, feature cache, bad files;
and `ssamba stats`."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _audio_helpers import TTS_COMMANDS, write_tone
from torch.utils.data import DataLoader

from ssamba.audio import AugmentConfig, FeatureConfig, features, load_audio
from ssamba.audio.stats import SPEECHCOMMANDS, RunningStats, dataset_stats, preset
from ssamba.cli import main
from ssamba.audio.io import AudioLoadError
from ssamba.data.dataset import AudioDataset, DatasetConfig, TooManyBadFiles, read_bad_files
from ssamba.data.manifest import ClassLabels, Entry, read_json_manifest, write_json_manifest
from ssamba.data.prepare import prepare

SC = FeatureConfig(target_length=128, mean=SPEECHCOMMANDS.mean, std=SPEECHCOMMANDS.std)


@pytest.fixture(scope="module")
def sc_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sc")
    prepare("speechcommands", TTS_COMMANDS, out, classes="found")
    return out


def _small(sc_manifest: Path, n: int = 12) -> tuple[list[Entry], ClassLabels]:
    from ssamba.data.manifest import read_class_labels

    return read_json_manifest(sc_manifest / "validation.json")[:n], read_class_labels(
        sc_manifest / "class_labels_indices.csv")


def test_eval_items_are_the_official_features(sc_manifest: Path) -> None:
    dataset = AudioDataset.from_manifest(sc_manifest / "validation.json", sc_manifest / "class_labels_indices.csv",
                                         DatasetConfig(features=SC))
    assert len(dataset) == 80
    x, y = dataset[5]
    entry = dataset.entries[5]
    waveform, sr = load_audio(entry.path)
    assert torch.equal(x, features(waveform, sr, 128, SC.mean, SC.std))
    assert x.shape == (128, 128) and x.dtype == torch.float32
    assert y.shape == (20,) and y.sum() == 1 and dataset.labels.mids[int(y.argmax())] == entry.labels[0]


def test_index_labels_and_validation(sc_manifest: Path) -> None:
    entries, labels = _small(sc_manifest)
    dataset = AudioDataset(entries, labels, DatasetConfig(features=SC, label_format="index"))
    assert dataset[0][1].dtype == torch.int64 and labels.mids[int(dataset[0][1])] == entries[0].labels[0]
    with pytest.raises(ValueError, match="soft labels"):
        DatasetConfig(label_format="index", augment=AugmentConfig(mixup=0.5))
    with pytest.raises(ValueError, match="not one of the 20 classes"):
        AudioDataset([Entry(entries[0].path, ("banana",))], labels)
    unlabeled = AudioDataset(entries, None, DatasetConfig(features=SC))
    assert unlabeled[0][1].numel() == 0


def test_augmentation_is_seeded_per_item_and_epoch(sc_manifest: Path) -> None:
    entries, labels = _small(sc_manifest)
    config = DatasetConfig(features=SC, augment=AugmentConfig(freqm=48, timem=48, mixup=0.6, noise=True), seed=3)
    dataset = AudioDataset(entries, labels, config)
    first = [dataset[i] for i in range(len(dataset))]
    again = AudioDataset(entries, labels, config)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, [again[i] for i in
                                                                                            range(len(again))]))
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], first[0][0])
    soft = [y for _, y in first if (y > 0).sum() == 2]
    assert soft, "mixup at p=0.6 over 12 items should mix at least one"
    for y in soft:  # lambda ~ Beta(10, 10): both parts well inside (0, 1), summing to 1
        assert torch.isclose(y.sum(), torch.tensor(1.0)) and 0.05 < float(y[y > 0].min()) < 0.5


def test_dataloader_workers_give_the_same_items(sc_manifest: Path) -> None:
    entries, labels = _small(sc_manifest, 8)
    dataset = AudioDataset(entries, labels, DatasetConfig(features=SC, augment=AugmentConfig(timem=40, noise=True)))
    serial = torch.stack([dataset[i][0] for i in range(8)])
    batches = list(DataLoader(dataset, batch_size=4, num_workers=2))
    assert torch.equal(torch.cat([x for x, _ in batches]), serial)


def test_feature_cache(sc_manifest: Path, tmp_path: Path) -> None:
    entries, labels = _small(sc_manifest, 3)
    config = DatasetConfig(features=SC, feature_cache=str(tmp_path / "cache"))
    dataset = AudioDataset(entries, labels, config)
    fresh = dataset[1][0]
    cached_files = list((tmp_path / "cache").rglob("*.npy"))
    assert len(cached_files) == 1 and np.load(cached_files[0]).shape == (98, 128)  # unpadded log-mel
    assert torch.equal(AudioDataset(entries, labels, config)[1][0], fresh)
    np.save(cached_files[0], np.zeros((98, 128), np.float32))  # prove the second read comes from the cache
    assert float(AudioDataset(entries, labels, config)[1][0][0, 0]) == pytest.approx(-SC.mean / (2 * SC.std))


def _bad_files(tmp_path: Path) -> list[Entry]:
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x01\x00\x00WAVE" + b"\x07" * 300)
    (tmp_path / "empty.wav").touch()
    nan = np.full(4000, 0.1, np.float32)
    nan[10] = np.nan
    sf.write(str(tmp_path / "nan.wav"), nan, 16000, subtype="FLOAT")
    return [Entry(str(tmp_path / name), ("a",)) for name in ("corrupt.wav", "empty.wav", "nan.wav", "absent.wav")]


def test_bad_files_are_skipped_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [Entry(str(tmp_path / f"good{i}.wav"), ("a",)) for i in range(2)]
    for e in good:
        write_tone(Path(e.path), seconds=0.3)
    write_tone(tmp_path / "tiny.wav", seconds=10 / 16000)  # 10 samples: valid, one zero-padded frame
    write_tone(tmp_path / "five.wav", seconds=0.3, channels=5)
    write_tone(tmp_path / "x48k.wav", seconds=0.3, sr=48000)
    write_tone(tmp_path / "x8k.wav", seconds=0.3, sr=8000)
    usable = [Entry(str(tmp_path / n), ("a",)) for n in ("tiny.wav", "five.wav", "x48k.wav", "x8k.wav")]
    entries = good + _bad_files(tmp_path) + usable
    dataset = AudioDataset(entries, ClassLabels.from_names(["a"]), DatasetConfig(features=SC, max_bad_files=4))
    with caplog.at_level(logging.WARNING, logger="ssamba.data.dataset"):
        items = [dataset[i] for i in range(len(dataset))]
    assert all(x.shape == (128, 128) and torch.isfinite(x).all() for x, _ in items)
    assert set(dataset.bad_files) == {e.path for e in entries[2:6]}
    assert "empty file" in dataset.bad_files[str(tmp_path / "empty.wav")]
    assert "NaN" in dataset.bad_files[str(tmp_path / "nan.wav")]
    assert "file not found" in dataset.bad_files[str(tmp_path / "absent.wav")]
    for name in ("corrupt.wav", "empty.wav", "nan.wav", "absent.wav"):
        assert str(tmp_path / name) in caplog.text
    # 5 channels -> channel 0; 48/8 kHz -> resampled: the 440 Hz tone peaks in the same mel bin everywhere
    peaks = [int(x[:20].mean(0).argmax()) for x, _ in [items[0]] + items[7:]]
    assert len(peaks) == 4 and len(set(peaks)) == 1
    tiny = items[6][0]  # one real frame, then the padding value
    assert not (tiny[0] == tiny[1]).all() and (tiny[1:] == tiny[1, 0]).all()


def test_too_many_bad_files_fail_loudly(tmp_path: Path) -> None:
    write_tone(tmp_path / "good.wav", seconds=0.3)
    entries = [Entry(str(tmp_path / "good.wav"), ("a",))] + _bad_files(tmp_path)
    dataset = AudioDataset(entries, ClassLabels.from_names(["a"]), DatasetConfig(features=SC, max_bad_files=2))
    with pytest.raises(TooManyBadFiles, match="3 bad audio files, more than max_bad_files=2") as info:
        for i in range(len(dataset)):
            dataset[i]
    assert "corrupt.wav" in str(info.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_bad_file_limit_is_run_wide_whatever_the_workers(tmp_path: Path, workers: int) -> None:
    """With a bad-files log the limit counts every worker's and epoch's files: a run fails or passes the same with
    any num_workers (each worker would otherwise hold its own count, and the limit grow with the workers)."""
    good = [Entry(str(tmp_path / f"good{i}.wav"), ("a",)) for i in range(12)]
    for e in good:
        write_tone(Path(e.path), seconds=0.3)
    entries = good + _bad_files(tmp_path)
    log = tmp_path / f"run{workers}" / "bad_files.tsv"
    config = DatasetConfig(features=SC, max_bad_files=3, bad_files_log=str(log))
    dataset = AudioDataset(entries, ClassLabels.from_names(["a"]), config)
    loader = DataLoader(dataset, batch_size=2, num_workers=workers)  # 2 workers: two bad files each
    with pytest.raises(TooManyBadFiles, match="4 bad audio files, more than max_bad_files=3"):
        list(loader)
    assert sorted(read_bad_files(log)) == sorted(e.path for e in entries[12:])
    passing = DatasetConfig(features=SC, max_bad_files=4, bad_files_log=str(tmp_path / f"ok{workers}.tsv"))
    assert len(list(DataLoader(AudioDataset(entries, ClassLabels.from_names(["a"]), passing), batch_size=2,
                               num_workers=workers))) == 8
    assert "empty file" in read_bad_files(tmp_path / f"ok{workers}.tsv")[str(tmp_path / "empty.wav")]


def test_evaluation_sets_do_not_replace_bad_files(tmp_path: Path) -> None:
    write_tone(tmp_path / "good.wav", seconds=0.3)
    entries = [Entry(str(tmp_path / "good.wav"), ("a",))] + _bad_files(tmp_path)[3:]  # absent.wav
    dataset = AudioDataset(entries, ClassLabels.from_names(["a"]), DatasetConfig(features=SC, on_bad="raise"))
    assert dataset[0][0].shape == (128, 128)
    with pytest.raises(AudioLoadError, match="absent.wav: file not found.*evaluation set does not replace"):
        dataset[1]


def test_clips_without_a_label_are_refused_in_a_labelled_set(tmp_path: Path) -> None:
    write_tone(tmp_path / "a.wav", seconds=0.3)
    entries = [Entry(str(tmp_path / "a.wav"), ("a",)), Entry(str(tmp_path / "a.wav"), ())]
    with pytest.raises(ValueError, match="a.wav: no label, but the data is used with 2 classes"):
        AudioDataset(entries, ClassLabels.from_names(["a", "b"]), DatasetConfig(features=SC))
    assert len(AudioDataset(entries[1:], None, DatasetConfig(features=SC))) == 1  # unlabeled data: fine


def test_short_raise_policy_makes_short_clips_bad_files(tmp_path: Path) -> None:
    write_tone(tmp_path / "tiny.wav", seconds=10 / 16000)
    write_tone(tmp_path / "ok.wav", seconds=0.3)
    config = DatasetConfig(features=FeatureConfig(target_length=32, short="raise"))
    dataset = AudioDataset([Entry(str(tmp_path / "tiny.wav")), Entry(str(tmp_path / "ok.wav"))], None, config)
    dataset[0]
    assert "shorter than one fbank window" in dataset.bad_files[str(tmp_path / "tiny.wav")]


def test_running_stats_are_exact() -> None:
    values = torch.randn(5000, dtype=torch.float64) * 3 + 7
    stats = RunningStats()
    for chunk in values.split(777):
        stats.update(chunk)
    assert stats.count == 5000
    assert stats.mean == pytest.approx(float(values.mean()), abs=1e-12)
    assert stats.std == pytest.approx(float(values.std()), abs=1e-12)


def test_stats_command(sc_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       caplog: pytest.LogCaptureFixture) -> None:
    entries = read_json_manifest(sc_manifest / "test.json")[:6]
    (tmp_path / "broken.wav").write_bytes(b"nope")
    manifest = write_json_manifest(entries + [Entry(str(tmp_path / "broken.wav"))], tmp_path / "m.json")
    stacked = torch.stack([features(*load_audio(e.path), 128, None, None) for e in entries])
    assert main(["stats", str(manifest), "--target-length", "128"]) == 1  # a file was skipped: nonzero exit
    out = capsys.readouterr().out
    mean, std = (float(line.split()[1]) for line in out.splitlines()[:2])
    assert mean == pytest.approx(float(stacked.double().mean()), abs=1e-6)
    assert std == pytest.approx(float(stacked.double().std()), abs=1e-6)
    assert "files 6" in out and "skipped" in out and "broken.wav" in out
    unpadded = dataset_stats([e.path for e in entries], None, progress=False)  # real frames only
    real = stacked[:, :98].double()
    assert unpadded.values == real.numel() == 6 * 98 * 128
    assert unpadded.mean == pytest.approx(float(real.mean()), abs=1e-9) and unpadded.mean < mean  # no zero padding
    with caplog.at_level("ERROR"):  # no silent AudioSet default: the task's length is asked for
        assert main(["stats", str(manifest)]) == 2
    assert "exactly one of --target-length N" in caplog.text
    with pytest.raises(SystemExit):  # --limit -1 once dropped the last file without a word
        main(["stats", str(manifest), "--no-pad", "--limit", "-1"])
    assert "must be a positive integer" in capsys.readouterr().err
    assert main(["stats", "--preset", "speech-commands"]) == 0
    assert capsys.readouterr().out.splitlines() == ["mean -6.845978", "std 5.5654526"]
    assert preset("UrbanSound8K").std == 4.229961395263672
