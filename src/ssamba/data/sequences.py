"""Long sequences of concatenated clips with one label per second: SSAMBA's UrbanSound8K 60-s task (spec §10).

The official training script for this task (``run_amba_1sec.py``) is missing (spec A4), so the construction is
ours, chosen as the most plausible reading of the official setting (60 s = 15 UrbanSound8K clips of at most 4 s):

* **Grouping.** Clips are grouped by fold (``Entry.split`` when every entry has one, else the clip's parent folder,
  ``audio/fold3/`` for UrbanSound8K) and, within a fold, kept in manifest order, so a sequence holds *consecutive*
  clips of one fold (in UrbanSound8K's metadata order, often slices of the same recording). Each fold is cut into
  runs of ``seconds // slot_seconds`` clips; the last run of a fold may be shorter (its empty slots are silence).
* **Placement.** Clip ``j`` of a run gets the slot ``[j*slot, (j+1)*slot)`` seconds. Its mean-removed 16-kHz samples
  start at the slot's start (the official loader pads at the end too) or, with ``jitter``, at a uniformly random
  offset inside the slot drawn from ``(seed, epoch, index)``; the rest of the slot is digital silence. A clip longer
  than its slot is cut to it. The log-mel of the whole sequence is then computed once, as for any clip (fbank ->
  pad/cut to ``target_length`` -> SpecAugment -> normalise).
* **Labels.** Second ``s`` is labelled with the class whose clips cover more than ``min_coverage`` of it (at 0.5, a
  strict majority, so at most one class qualifies); seconds that no class covers that much (silence, padding, a
  clip's short tail, unreadable clips) get ``ignore_index``, never a guessed class.

A clip that cannot be read leaves its slot silent and unlabelled; like :class:`AudioDataset`, more than
``max_bad_files`` distinct bad files stop the run.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ssamba.audio.fbank import clip_mean, fbank
from ssamba.audio.features import SAMPLE_RATE
from ssamba.audio.io import AudioLoadError
from ssamba.data.dataset import AudioDataset, DatasetConfig, item_seed
from ssamba.data.manifest import ClassLabels, Entry, read_class_labels, read_manifest

log = logging.getLogger(__name__)

#: the official feature frame rate: one fbank frame every 10 ms
FRAMES_PER_SECOND = 100


@dataclass(frozen=True)
class SequenceConfig:
    """How clips become labelled sequences; the defaults are the Urban8K setting (60 s, 15 slots of 4 s)."""

    seconds: int = 60  # sequence length = number of per-second labels (model outputs)
    slot_seconds: float = 4.0  # one clip per slot (UrbanSound8K clips are at most 4 s long)
    jitter: bool = False  # place each clip at a random offset in its slot (training only; seeded per epoch)
    min_coverage: float = 0.5  # a second is labelled when one class covers more than this fraction of it
    group_by: Literal["auto", "split", "folder"] = "auto"  # what "the same fold" means; auto: split, else folder
    ignore_index: int = -100  # label of unlabelled seconds (torch's CrossEntropyLoss default)

    def __post_init__(self) -> None:
        if self.seconds < 1:
            raise ValueError(f"seconds must be >= 1, got {self.seconds}")
        if not 0 < self.slot_seconds <= self.seconds:
            raise ValueError(f"slot_seconds must be in (0, seconds={self.seconds}], got {self.slot_seconds}")
        if abs(self.slot_seconds * SAMPLE_RATE - round(self.slot_seconds * SAMPLE_RATE)) > 1e-6:
            raise ValueError(f"slot_seconds={self.slot_seconds} is not a whole number of {SAMPLE_RATE}-Hz samples")
        if not 0.0 <= self.min_coverage < 1.0:
            raise ValueError(f"min_coverage is a fraction of a second in [0, 1), got {self.min_coverage}")
        if self.group_by not in ("auto", "split", "folder"):
            raise ValueError(f"group_by must be 'auto', 'split' or 'folder', got {self.group_by!r}")
        if self.ignore_index >= 0:
            raise ValueError(f"ignore_index must be negative (never a class index), got {self.ignore_index}")

    @property
    def clips_per_sequence(self) -> int:
        return int(self.seconds // self.slot_seconds)

    @property
    def slot_samples(self) -> int:
        return round(self.slot_seconds * SAMPLE_RATE)


@dataclass(frozen=True)
class Placement:
    """Where one clip lies in a sequence, in 16-kHz samples, and its class index."""

    start: int
    length: int
    label: int
    path: str


@dataclass
class Composition:
    """One sequence before feature extraction: its waveform, per-second labels and what lies where."""

    waveform: torch.Tensor  # (seconds * 16000,) float32
    labels: torch.Tensor  # (seconds,) int64, ignore_index where unlabelled
    placements: list[Placement]


def plan_sequences(entries: Sequence[Entry], config: SequenceConfig) -> list[tuple[int, ...]]:
    """Entry indices of every sequence: consecutive runs of ``clips_per_sequence`` clips within each group, groups
    in order of first appearance."""
    group_by = config.group_by
    if group_by == "auto":
        group_by = "split" if all(e.split is not None for e in entries) else "folder"
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        if group_by == "split" and entry.split is None:
            raise ValueError(f"{entry.path}: group_by='split' but the entry has no split (fold)")
        key = entry.split if group_by == "split" else str(Path(entry.path).parent)
        groups.setdefault(key, []).append(i)
    per = config.clips_per_sequence
    return [tuple(run[k:k + per]) for run in groups.values() for k in range(0, len(run), per)]


def second_labels(placements: Sequence[Placement], seconds: int, min_coverage: float = 0.5,
                  ignore_index: int = -100, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Per-second class: the class covering more than ``min_coverage`` of the second, unique; else ignore."""
    coverage: list[dict[int, int]] = [{} for _ in range(seconds)]
    for p in placements:
        end = p.start + p.length
        for s in range(max(p.start // sample_rate, 0), min((end - 1) // sample_rate + 1, seconds)):
            overlap = min(end, (s + 1) * sample_rate) - max(p.start, s * sample_rate)
            if overlap > 0:
                coverage[s][p.label] = coverage[s].get(p.label, 0) + overlap
    labels = torch.full((seconds,), ignore_index, dtype=torch.long)
    for s, cover in enumerate(coverage):
        if not cover:
            continue
        best = max(cover.values())
        winners = [c for c, v in cover.items() if v == best]
        if len(winners) == 1 and best > min_coverage * sample_rate:
            labels[s] = winners[0]
    return labels


class SequenceDataset(AudioDataset):
    """``(features (target_length, 128), labels (seconds,) int64)`` per sequence; see the module docstring."""

    def __init__(self, entries: Sequence[Entry], labels: ClassLabels | None, config: DatasetConfig | None = None,
                 sequence: SequenceConfig | None = None) -> None:
        super().__init__(entries, labels, config)
        self.sequence = sequence or SequenceConfig()
        if labels is None:
            raise ValueError("per-second sequences need class labels (a class_labels_indices.csv)")
        if self.config.augment.mixup > 0:
            raise ValueError("mixup is not defined for per-second sequences; set augment.mixup=0")
        multi = [e.path for e in self.entries if len(e.labels) != 1]
        if multi:
            raise ValueError(f"{multi[0]}: per-second sequences need exactly one label per clip")
        frames = self.sequence.seconds * FRAMES_PER_SECOND
        if self.config.features.target_length < frames:
            log.warning("target_length %d frames is shorter than the %d-s sequences (%d frames): the last seconds "
                        "are cut from the input but keep their labels", self.config.features.target_length,
                        self.sequence.seconds, frames)
        self.sequences = plan_sequences(self.entries, self.sequence)
        self._clip_index = [self.labels.index(e.labels[0]) for e in self.entries]
        self._cut_clips: set[str] = set()

    @classmethod
    def from_manifest(cls, manifest: str | Path, class_labels: str | Path | None = None,
                      config: DatasetConfig | None = None,
                      sequence: SequenceConfig | None = None) -> SequenceDataset:
        labels = read_class_labels(class_labels) if class_labels is not None else None
        return cls(read_manifest(manifest), labels, config, sequence)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(item_seed(self.config.seed, self.epoch, index))
        composition = self.compose(index, generator)
        logmel = fbank(composition.waveform, SAMPLE_RATE, mean=0.0, short=self.config.features.short)
        return self.finish(logmel, generator), composition.labels

    def compose(self, index: int, generator: torch.Generator | None = None) -> Composition:
        """Waveform, labels and placements of sequence ``index`` (``generator``: the item's stream, for jitter)."""
        seq = self.sequence
        if generator is None:
            generator = torch.Generator().manual_seed(item_seed(self.config.seed, self.epoch, index))
        slot = seq.slot_samples
        waveform = torch.zeros(seq.seconds * SAMPLE_RATE)
        placements = []
        # one draw per slot, used or not, so the stream after placement does not depend on the clips' lengths
        draws = torch.rand(seq.clips_per_sequence, generator=generator, dtype=torch.float64).tolist()
        for j, entry_index in enumerate(self.sequences[index]):
            entry = self.entries[entry_index]
            try:
                clip = self._waveform(entry.path)
            except AudioLoadError as exc:
                self._record_bad(exc)  # raises TooManyBadFiles past max_bad_files
                continue
            if clip.shape[0] > slot:
                self._note_cut(entry.path, clip.shape[0])
                clip = clip[:slot]
            clip = clip - clip_mean(clip[None])[0]
            free = slot - clip.shape[0]
            offset = min(int(draws[j] * (free + 1)), free) if seq.jitter else 0
            start = j * slot + offset
            waveform[start:start + clip.shape[0]] = clip
            placements.append(Placement(start, clip.shape[0], self._clip_index[entry_index], entry.path))
        labels = second_labels(placements, seq.seconds, seq.min_coverage, seq.ignore_index)
        return Composition(waveform, labels, placements)

    def _note_cut(self, path: str, samples: int) -> None:
        if path not in self._cut_clips:
            self._cut_clips.add(path)
            log.warning("%s: %.3f s is longer than its %.3f-s slot; cut to the slot (%d clip(s) cut so far)", path,
                        samples / SAMPLE_RATE, self.sequence.slot_seconds, len(self._cut_clips))
