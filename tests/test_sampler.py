"""The resumable sampler's class-balanced mode (train.balanced, SUPERB's WeightedRandomSampler): draws in
proportion to the weights, the same per (seed, epoch) on every process, resumable, dealt out across ranks."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from _audio_helpers import write_tone

from ssamba.data.dataset import AudioDataset
from ssamba.data.manifest import ClassLabels, Entry
from ssamba.data.sequences import SequenceDataset
from ssamba.train.engine import TrainingError
from ssamba.train.sampler import ResumableSampler


def test_weighted_draws_balance_the_classes_and_resume():
    labels = [0] * 900 + [1] * 90 + [2] * 10  # 90% / 9% / 1%
    counts = Counter(labels)
    weights = [1.0 / counts[y] for y in labels]
    sampler = ResumableSampler(len(labels), seed=3, weights=weights)
    drawn = Counter(labels[i] for epoch in range(5) for i in (sampler.set_epoch(epoch) or sampler))
    assert sum(drawn.values()) == 5000
    for c in range(3):  # each class about a third (binomial sd ~33 of 1667)
        assert abs(drawn[c] - 5000 / 3) < 150, drawn
    sampler.set_epoch(2)
    whole = list(sampler)
    assert list(ResumableSampler(len(labels), seed=3, weights=weights).indices()) != whole  # epoch 0 differs
    sampler.set_epoch(2, start=123)
    assert list(sampler) == whole[123:]  # a resumed epoch continues on the same draws
    ranks = [ResumableSampler(len(labels), seed=3, rank=r, world_size=3, weights=weights) for r in range(3)]
    for r in ranks:
        r.set_epoch(2)
    assert sorted(i for r in ranks for i in r) == sorted(whole + whole[:2])  # padded to 1002, dealt out
    with pytest.raises(ValueError, match="non-negative"):
        ResumableSampler(3, weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="3 non-negative"):
        ResumableSampler(3, weights=[1.0, 1.0])


def test_class_balance_weights_of_a_dataset(tmp_path: Path):
    from ssamba.train.engine import class_balance

    labels = ClassLabels.from_names(["a", "b"])
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.wav"
        write_tone(path, seconds=0.1)
        paths.append(str(path))
    data = AudioDataset([Entry(paths[0], ("a",)), Entry(paths[1], ("a",)), Entry(paths[2], ("a",)),
                         Entry(paths[3], ("b",))], labels)
    assert class_balance(data) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    multi = AudioDataset([Entry(paths[0], ("a", "b")), Entry(paths[1], ("a",))], labels)
    with pytest.raises(TrainingError, match="0.wav: class-balanced sampling needs exactly one label per clip"):
        class_balance(multi)
    with pytest.raises(TrainingError, match="a per-second sequence holds several classes"):
        class_balance(SequenceDataset([Entry(p, ("a",)) for p in paths], labels))
    with pytest.raises(TrainingError, match="not a TensorDataset"):
        class_balance(torch.utils.data.TensorDataset(torch.zeros(2)))
