"""Long sequences of concatenated clips with one label per second: SSAMBA's UrbanSound8K 60-s task (spec §10).

Two layouts (``SequenceConfig.layout``):

``packed`` (default), the official construction of the 60-s files (SSAMBA's ``prep_data/urban8k/prep_urban8k.py``;
only its training script, ``run_amba_1sec.py``, is missing):

* each fold's clips are shuffled once (seeded by ``shuffle_seed`` and the fold's name, where the official script
  drew an unseeded shuffle when it wrote the files), each clip is padded with silence to the next whole second and
  the clips are packed back to back into one stream per fold, cut into sequences of ``seconds``: a clip may run on
  from one sequence into the next;
* every second carries its clip's class, the padded tail second included; the fold's last sequence is filled with
  silence labelled with the last clip's class (``pad_label="ignore"`` leaves those seconds out instead);
* the sequence's mean is removed before the log-mel (the official loader does it per file).
  Not reproduced: the official files were written as 16-bit PCM (a quantisation at -96 dB).

``slots``, our earlier reading, kept for comparison: 60 s = 15 slots of 4 s; consecutive clips of one fold (in
manifest order) take one slot each, starting at the slot's start or, with ``jitter``, at a random offset drawn per
epoch; each clip's own mean is removed; second ``s`` is labelled with the class whose clips cover more than
``min_coverage`` of it, and seconds no class covers that much (silence, short clips' tails) get ``ignore_index``.

In both, clips are grouped by fold (``Entry.split`` when every entry has one, else the clip's parent folder,
``audio/fold3/`` for UrbanSound8K) and a sequence never mixes folds. A clip that cannot be read leaves its seconds
silent and unlabelled (``ignore_index``); like :class:`AudioDataset`, more than ``max_bad_files`` distinct bad files
stop the run, and an evaluation set refuses any.
"""
from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ssamba.audio.fbank import clip_mean, fbank
from ssamba.audio.features import SAMPLE_RATE
from ssamba.audio.io import AudioLoadError, check_audio
from ssamba.audio.resample import resampled_length
from ssamba.data.dataset import AudioDataset, DatasetConfig, item_seed
from ssamba.data.manifest import ClassLabels, Entry, read_class_labels, read_manifest

log = logging.getLogger(__name__)

#: the official feature frame rate: one fbank frame every 10 ms
FRAMES_PER_SECOND = 100


@dataclass(frozen=True)
class SequenceConfig:
    """How clips become labelled sequences; the defaults are the official Urban8K setting (60 s, packed)."""

    seconds: int = 60  # sequence length = number of per-second labels (model outputs)
    layout: Literal["packed", "slots"] = "packed"  # the official packing, or our earlier fixed slots
    shuffle_seed: int | None = 0  # packed: each fold shuffled once with this seed and its name; None: manifest order
    pad_label: Literal["last", "ignore"] = "last"  # packed: the silence filling a fold's last sequence
    slot_seconds: float = 4.0  # slots: one clip per slot (UrbanSound8K clips are at most 4 s long)
    jitter: bool = False  # slots: place each clip at a random offset in its slot (training only; seeded per epoch)
    min_coverage: float = 0.5  # slots: a second is labelled when one class covers more than this fraction of it
    group_by: Literal["auto", "split", "folder"] = "auto"  # what "the same fold" means; auto: split, else folder
    ignore_index: int = -100  # label of unlabelled seconds (torch's CrossEntropyLoss default)

    def __post_init__(self) -> None:
        if self.seconds < 1:
            raise ValueError(f"seconds must be >= 1, got {self.seconds}")
        if self.layout not in ("packed", "slots"):
            raise ValueError(f"layout must be 'packed' (the official construction) or 'slots', got {self.layout!r}")
        if self.pad_label not in ("last", "ignore"):
            raise ValueError(f"pad_label must be 'last' (official) or 'ignore', got {self.pad_label!r}")
        if self.layout == "packed" and self.jitter:
            raise ValueError("jitter places clips inside their slots: it needs layout='slots'")
        if self.layout == "slots" and not 0 < self.slot_seconds <= self.seconds:
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
        """Slots per sequence (layout 'slots')."""
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


def group_entries(entries: Sequence[Entry], config: SequenceConfig) -> dict[str, list[int]]:
    """Entry indices per fold, folds in order of first appearance, manifest order inside a fold."""
    group_by = config.group_by
    if group_by == "auto":
        group_by = "split" if all(e.split is not None for e in entries) else "folder"
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        if group_by == "split" and entry.split is None:
            raise ValueError(f"{entry.path}: group_by='split' but the entry has no split (fold)")
        key = entry.split if group_by == "split" else str(Path(entry.path).parent)
        groups.setdefault(key, []).append(i)
    return groups


def plan_sequences(entries: Sequence[Entry], config: SequenceConfig) -> list[tuple[int, ...]]:
    """Layout 'slots': entry indices of every sequence, consecutive runs of ``clips_per_sequence`` clips within
    each fold."""
    per = config.clips_per_sequence
    return [tuple(run[k:k + per]) for run in group_entries(entries, config).values()
            for k in range(0, len(run), per)]


@dataclass(frozen=True)
class Piece:
    """Layout 'packed': one clip in a sequence. ``start`` (seconds from the sequence's start) is negative for a
    clip that began in the sequence before; ``span`` is its length rounded up to whole seconds."""

    entry: int
    start: int
    span: int


def pack_sequences(entries: Sequence[Entry], spans: Sequence[int | None], config: SequenceConfig,
                   class_of: Sequence[int]) -> tuple[list[tuple[Piece, ...]], list[list[int]]]:
    """Layout 'packed': the pieces and per-second labels of every sequence (see the module docstring).

    ``spans``: each entry's length in whole seconds (None: unreadable, left out as the official script skips a
    missing file); ``class_of``: each entry's class index."""
    seconds, plans, labels = config.seconds, [], []
    for key, run in group_entries(entries, config).items():
        run = [i for i in run if spans[i] is not None]
        if not run:
            continue
        if config.shuffle_seed is not None:
            fold = Path(key).name or key  # the folder's name, so the order does not depend on where data lies
            order = np.random.default_rng([config.shuffle_seed, zlib.crc32(fold.encode())]).permutation(len(run))
            run = [run[k] for k in order]
        stream, at = [], 0  # (entry, start second in the fold's stream)
        for i in run:
            stream.append((i, at))
            at += spans[i]
        for first in range(0, at, seconds):
            pieces = tuple(Piece(i, start - first, spans[i]) for i, start in stream
                           if start < first + seconds and start + spans[i] > first)
            second = [config.ignore_index] * seconds
            for piece in pieces:
                for s in range(max(piece.start, 0), min(piece.start + piece.span, seconds)):
                    second[s] = class_of[piece.entry]
            tail = at - first  # seconds of clips in the fold's last sequence
            if tail < seconds and config.pad_label == "last":
                second[tail:] = [class_of[stream[-1][0]]] * (seconds - tail)
            plans.append(pieces)
            labels.append(second)
    return plans, labels


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
        self._clip_index = [self.labels.index(e.labels[0]) for e in self.entries]
        self._cut_clips: set[str] = set()
        if self.sequence.layout == "slots":
            self.sequences: list[tuple[int, ...]] = plan_sequences(self.entries, self.sequence)
        else:
            spans = [self._span(e.path) for e in self.entries]
            self.pieces, self._second_labels = pack_sequences(self.entries, spans, self.sequence, self._clip_index)
            if not self.pieces:
                raise ValueError("none of the manifest's clips could be read; see the bad files logged above")
            self.sequences = [tuple(piece.entry for piece in pieces) for pieces in self.pieces]

    @classmethod
    def from_manifest(cls, manifest: str | Path, class_labels: str | Path | None = None,
                      config: DatasetConfig | None = None,
                      sequence: SequenceConfig | None = None) -> SequenceDataset:
        labels = read_class_labels(class_labels) if class_labels is not None else None
        return cls(read_manifest(manifest), labels, config, sequence)

    def __len__(self) -> int:
        return len(self.sequences)

    def class_balance_weights(self) -> list[float]:
        raise ValueError("class-balanced sampling draws clips; a per-second sequence holds several classes")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(item_seed(self.config.seed, self.epoch, index))
        composition = self.compose(index, generator)
        mean = None if self.sequence.layout == "packed" else 0.0  # packed: the sequence's mean; slots: the clips'
        logmel = fbank(composition.waveform, SAMPLE_RATE, mean=mean, short=self.config.features.short)
        return self.finish(logmel, generator), composition.labels

    def compose(self, index: int, generator: torch.Generator | None = None) -> Composition:
        """Waveform, labels and placements of sequence ``index`` (``generator``: the item's stream, for jitter)."""
        if self.sequence.layout == "packed":
            return self._compose_packed(index)
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
                self._note_cut(entry.path, clip.shape[0], seq.slot_seconds)
                clip = clip[:slot]
            clip = clip - clip_mean(clip[None])[0]
            free = slot - clip.shape[0]
            offset = min(int(draws[j] * (free + 1)), free) if seq.jitter else 0
            start = j * slot + offset
            waveform[start:start + clip.shape[0]] = clip
            placements.append(Placement(start, clip.shape[0], self._clip_index[entry_index], entry.path))
        labels = second_labels(placements, seq.seconds, seq.min_coverage, seq.ignore_index)
        return Composition(waveform, labels, placements)

    def _note_cut(self, path: str, samples: int, room: float) -> None:
        if path not in self._cut_clips:
            self._cut_clips.add(path)
            log.warning("%s: %.3f s is longer than its %.3f-s slot; cut to the slot (%d clip(s) cut so far)", path,
                        samples / SAMPLE_RATE, room, len(self._cut_clips))

    def _span(self, path: str) -> int | None:
        """A clip's length at 16 kHz in whole seconds, from its header; None (recorded as bad) if unreadable."""
        try:
            rate, frames, _ = check_audio(path)
        except AudioLoadError as exc:
            self._record_bad(exc)
            return None
        return max(1, math.ceil(resampled_length(frames, rate, SAMPLE_RATE) / SAMPLE_RATE))

    def _compose_packed(self, index: int) -> Composition:
        seconds = self.sequence.seconds
        waveform = torch.zeros(seconds * SAMPLE_RATE)
        labels = torch.tensor(self._second_labels[index], dtype=torch.long)
        placements = []
        for piece in self.pieces[index]:
            entry = self.entries[piece.entry]
            first, last = max(piece.start, 0), min(piece.start + piece.span, seconds)
            try:
                clip = self._waveform(entry.path)
            except AudioLoadError as exc:
                self._record_bad(exc)  # raises TooManyBadFiles past max_bad_files
                labels[first:last] = self.sequence.ignore_index
                continue
            if clip.shape[0] > piece.span * SAMPLE_RATE:  # longer than its header said: kept to its planned span
                self._note_cut(entry.path, clip.shape[0], piece.span)
                clip = clip[:piece.span * SAMPLE_RATE]
            skip = max(-piece.start, 0) * SAMPLE_RATE  # the part played in the sequence before
            part = clip[skip:skip + (last - first) * SAMPLE_RATE]
            if part.numel():
                start = first * SAMPLE_RATE
                waveform[start:start + part.shape[0]] = part
                placements.append(Placement(start, part.shape[0], self._clip_index[piece.entry], entry.path))
        return Composition(waveform, labels, placements)
