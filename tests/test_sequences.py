"""Per-second sequences (UrbanSound8K 60-s task): the official packing (shuffled whole-second clips back to back,
running on across sequences) and the slots layout (grouping by fold, clip placement, per-second labels, jitter)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssamba.audio import AugmentConfig, FeatureConfig, load_audio
from ssamba.audio.fbank import FLT_EPSILON, fbank
from ssamba.audio.io import AudioLoadError
from ssamba.audio.resample import resample
from ssamba.data.dataset import DatasetConfig, TooManyBadFiles
from ssamba.data.manifest import ClassLabels, Entry
from ssamba.data.sequences import Placement, SequenceConfig, SequenceDataset, plan_sequences, second_labels

LABELS = ClassLabels.from_names(["c0", "c1", "c2"])
FEATURES = FeatureConfig(target_length=608, mean=-5.0, std=4.0)
SEQ = SequenceConfig(seconds=6, layout="slots", slot_seconds=2.0)  # 3 slots of 2 s


def clip(path: Path, seconds: float, sr: int = 16000, freq: float = 440.0) -> Entry:
    """A tone with a DC offset (which placement must remove), labelled by ``path``'s stem prefix."""
    t = np.arange(int(round(seconds * sr))) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 + 0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype="FLOAT")
    return Entry(str(path), (path.stem.split("_")[0],))


@pytest.fixture
def corpus(tmp_path: Path) -> list[Entry]:
    """fold1: 2.0, 1.2 (44.1 kHz), 1.6, 0.4, 2.5 s; fold2: 2.0 s; listed interleaved as in a training manifest."""
    f1, f2 = tmp_path / "audio" / "fold1", tmp_path / "audio" / "fold2"
    return [clip(f1 / "c0_a.wav", 2.0), clip(f2 / "c2_f.wav", 2.0, freq=900), clip(f1 / "c1_b.wav", 1.2, 44100),
            clip(f1 / "c2_c.wav", 1.6, freq=700), clip(f1 / "c0_d.wav", 0.4), clip(f1 / "c1_e.wav", 2.5, freq=300)]


def dataset(entries: list[Entry], sequence: SequenceConfig = SEQ, **config) -> SequenceDataset:
    return SequenceDataset(entries, LABELS, DatasetConfig(features=FEATURES, **config), sequence)


def expected_clip(entry: Entry) -> torch.Tensor:
    waveform, sr = load_audio(entry.path)
    samples = resample(waveform, sr, 16000)[0]
    return samples - samples.double().mean().float()


def test_consecutive_clips_of_one_fold_fill_the_slots_and_label_each_second(corpus, caplog) -> None:
    data = dataset(corpus)
    assert data.sequences == [(0, 2, 3), (4, 5), (1,)]  # folds never mix; manifest order kept inside a fold
    assert len(data) == 3
    with caplog.at_level(logging.WARNING):
        comps = [data.compose(i) for i in range(3)]
    ignore = -100
    # 2.0 s | 1.2 s (0.2 s tail: ignored) | 1.6 s (0.6 s > half: labelled)
    assert comps[0].labels.tolist() == [0, 0, 1, ignore, 2, 2]
    # 0.4 s (never most of a second) | 2.5 s cut to its 2-s slot | empty slot
    assert comps[1].labels.tolist() == [ignore, ignore, 1, 1, ignore, ignore]
    assert comps[2].labels.tolist() == [2, 2] + [ignore] * 4
    assert "c1_e.wav" in caplog.text and "cut to the slot" in caplog.text
    # each mean-removed, resampled clip starts at its slot; everything else is digital silence
    for comp, indices in zip(comps, data.sequences):
        assert [p.start for p in comp.placements] == [32000 * j for j in range(len(indices))]
        occupied = torch.zeros(6 * 16000, dtype=torch.bool)
        for p, i in zip(comp.placements, indices):
            want = expected_clip(corpus[i])[:32000]
            assert p.length == len(want) and p.path == corpus[i].path
            torch.testing.assert_close(comp.waveform[p.start:p.start + p.length], want, rtol=0, atol=1e-6)
            occupied[p.start:p.start + p.length] = True
        assert not comp.waveform[~occupied].any()
    assert comps[0].placements[1].length == 19200  # 1.2 s at 44.1 kHz -> 16 kHz


def test_items_are_the_sequence_log_mel_with_labels(corpus) -> None:
    data = dataset(corpus)
    x, labels = data[0]
    assert x.shape == (608, 128) and labels.dtype == torch.long
    assert labels.tolist() == data.compose(0).labels.tolist()
    silence = (np.log(FLT_EPSILON) + 5.0) / 8.0  # digital silence after normalisation
    # frames 320..397 lie inside the silence between clip b (ends at 3.2 s) and clip c (starts at 4 s)
    torch.testing.assert_close(x[320:398], torch.full((78, 128), silence), rtol=0, atol=1e-5)
    assert (x[:300].std(dim=0) > 0).any() and (x[400:560].std(dim=0) > 0).any()
    torch.testing.assert_close(x[600:], torch.full((8, 128), 5.0 / 8.0))  # padding past 6 s: 0 before normalising


def brute_force_labels(placements: list[Placement], seconds: int, sr: int, min_coverage: float) -> list[int]:
    owner = np.full(seconds * sr, -1)
    for p in placements:
        owner[p.start:p.start + p.length] = p.label
    out = []
    for s in range(seconds):
        counts = np.bincount(owner[s * sr:(s + 1) * sr] + 1, minlength=5)[1:]  # per class, silence dropped
        best = counts.max()
        out.append(int(counts.argmax()) if best > min_coverage * sr and (counts == best).sum() == 1 else -100)
    return out


@pytest.mark.parametrize("min_coverage", [0.5, 0.3, 0.0])
def test_second_labels_equal_a_per_sample_count(min_coverage) -> None:
    rng = np.random.default_rng(0)
    sr, seconds = 50, 12
    for _ in range(200):
        cuts = np.sort(rng.choice(seconds * sr, size=rng.integers(2, 14) * 2, replace=False))
        placements = [Placement(int(a), int(b - a), int(rng.integers(0, 4)), "x") for a, b in cuts.reshape(-1, 2)]
        got = second_labels(placements, seconds, min_coverage, sample_rate=sr).tolist()
        assert got == brute_force_labels(placements, seconds, sr, min_coverage)


def test_jitter_is_seeded_by_epoch_and_stays_in_the_slot(corpus) -> None:
    data = dataset(corpus, SequenceConfig(seconds=6, layout="slots", slot_seconds=2.0, jitter=True), seed=3)
    first = data.compose(0)
    again = dataset(corpus, SequenceConfig(seconds=6, layout="slots", slot_seconds=2.0, jitter=True), seed=3).compose(0)
    assert torch.equal(first.waveform, again.waveform) and first.placements == again.placements
    data.set_epoch(1)
    later = data.compose(0)
    assert [p.start for p in later.placements] != [p.start for p in first.placements]
    for comp in (first, later):
        for j, p in enumerate(comp.placements):
            assert 32000 * j <= p.start and p.start + p.length <= 32000 * (j + 1)
        assert comp.labels.tolist() == brute_force_labels(comp.placements, 6, 16000, 0.5)
    torch.testing.assert_close(data[0][0], data[0][0])  # deterministic item, features included


def test_unreadable_clip_leaves_a_silent_unlabelled_slot(corpus, tmp_path) -> None:
    entries = [corpus[0], Entry(str(tmp_path / "audio" / "fold1" / "c1_missing.wav"), ("c1",)), corpus[3]]
    data = dataset(entries)
    comp = data.compose(0)
    assert comp.labels.tolist() == [0, 0, -100, -100, 2, 2]
    assert not comp.waveform[32000:64000].any() and "c1_missing.wav" in next(iter(data.bad_files))
    with pytest.raises(TooManyBadFiles, match="c1_missing.wav"):
        dataset(entries, max_bad_files=0)[0]


def test_bad_configurations_name_the_problem(corpus) -> None:
    with pytest.raises(ValueError, match="c0_a.wav: per-second sequences need exactly one label"):
        dataset([Entry(corpus[0].path, ("c0", "c1"))])
    with pytest.raises(ValueError, match="mixup"):
        dataset(corpus, augment=AugmentConfig(mixup=0.5))
    with pytest.raises(ValueError, match="c0_a.wav: group_by='split'"):
        plan_sequences(corpus, SequenceConfig(layout="slots", group_by="split"))
    split = [Entry(e.path, e.labels, "foldX") for e in corpus]
    assert plan_sequences(split, SEQ) == [(0, 1, 2), (3, 4, 5)]  # Entry.split wins over folders under "auto"
    with pytest.raises(ValueError, match="whole number"):
        SequenceConfig(slot_seconds=1 / 3)


PACKED = SequenceConfig(seconds=3, shuffle_seed=None)  # manifest order: the stream is predictable


def test_packed_clips_run_back_to_back_in_whole_seconds_across_sequences(corpus) -> None:
    """The official construction: each clip padded to whole seconds and packed (fold1: a 2 + b 2 + c 2 + d 1 + e 3 =
    10 s -> sequences of 3 s hold [a a b] [b c c] [d e e] [e + 2 s filled with e's class]); folds never mix."""
    data = dataset(corpus, PACKED)
    ignore = -100
    comps = [data.compose(i) for i in range(len(data))]
    assert len(data) == 5 and data.sequences == [(0, 2), (2, 3), (4, 5), (5,), (1,)]
    assert [c.labels.tolist() for c in comps] == [[0, 0, 1], [1, 2, 2], [0, 1, 1], [1, 1, 1], [2, 2, 2]]
    assert ignore not in torch.cat([c.labels for c in comps]).tolist()
    # raw samples (the mean is removed later, over the whole sequence), each clip at its whole-second offset
    raw = {}
    for e in corpus:
        waveform, sr = load_audio(e.path)
        raw[e.path] = resample(waveform, sr, 16000)[0]
    sr = 16000
    b = raw[corpus[2].path]  # 1.2 s: seconds 2-3 of the stream, i.e. second 2 of sequence 0 and second 0 of 1
    torch.testing.assert_close(comps[0].waveform[2 * sr:], b[:sr])
    torch.testing.assert_close(comps[1].waveform[:b.shape[0] - sr], b[sr:])
    assert not comps[1].waveform[b.shape[0] - sr:sr].any()  # b's padding to 2 s
    e = raw[corpus[5].path]  # 2.5 s padded to 3 s: seconds 1-2 of sequence 2, then 0.5 s in sequence 3
    torch.testing.assert_close(comps[2].waveform[sr:], e[:2 * sr])
    torch.testing.assert_close(comps[3].waveform[:e.shape[0] - 2 * sr], e[2 * sr:])
    assert not comps[3].waveform[e.shape[0] - 2 * sr:].any()  # e's padding, then the fold's filling silence
    x, labels = data[0]
    assert x.shape == (608, 128) and labels.tolist() == [0, 0, 1]
    ours = fbank(comps[0].waveform, 16000, mean=None)
    torch.testing.assert_close(x[:ours.shape[0]], (ours + 5.0) / 8.0)  # sequence mean removed, then normalised


def test_packed_shuffle_is_seeded_per_fold_and_pad_label_ignore(corpus) -> None:
    seeded = dataset(corpus, SequenceConfig(seconds=3, shuffle_seed=7))
    again = dataset(list(corpus), SequenceConfig(seconds=3, shuffle_seed=7))
    assert seeded.sequences == again.sequences and seeded._second_labels == again._second_labels
    orders = {tuple(dataset(corpus, SequenceConfig(seconds=3, shuffle_seed=k)).sequences) for k in range(6)}
    assert len(orders) > 1  # the seed reorders the fold
    ignored = dataset(corpus, SequenceConfig(seconds=3, shuffle_seed=None, pad_label="ignore"))
    assert ignored.compose(3).labels.tolist() == [1, -100, -100]


def test_packed_unreadable_clips(corpus, tmp_path, caplog) -> None:
    missing = Entry(str(tmp_path / "audio" / "fold1" / "c1_missing.wav"), ("c1",))
    data = dataset([corpus[0], missing, corpus[3]], PACKED)  # left out of the stream, as the official script does
    assert data.sequences == [(0, 2), (2,)] and "c1_missing.wav" in next(iter(data.bad_files))
    with pytest.raises(AudioLoadError, match="c1_missing.wav"):
        dataset([corpus[0], missing], PACKED, on_bad="raise")  # an evaluation set refuses it
    data = dataset([corpus[0], corpus[3]], PACKED)
    Path(corpus[3].path).write_bytes(b"")  # damaged after the plan: its seconds silent and unlabelled
    comp = data.compose(0)
    assert comp.labels.tolist() == [0, 0, -100] and not comp.waveform[2 * 16000:].any()
    with pytest.raises(ValueError, match="jitter.*layout='slots'"):
        SequenceConfig(jitter=True)
    with pytest.raises(ValueError, match="layout"):
        SequenceConfig(layout="slot")
