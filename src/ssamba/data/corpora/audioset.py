"""AudioSet from its segment CSVs and a folder of downloaded clips.

``root`` holds ``class_labels_indices.csv`` (527 classes, the official index order), one or more of
``balanced_train_segments.csv`` / ``eval_segments.csv`` / ``unbalanced_train_segments.csv``, and the clips anywhere
below it, named by YouTube id: ``<ytid>.<ext>``, ``Y<ytid>.<ext>`` or either followed by ``_<anything>`` (e.g. the
start time). Clips that were never downloaded (many videos are gone) are reported as missing, per split.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from ssamba.data.corpora._common import Corpus, find_audio, require
from ssamba.data.manifest import Entry, read_class_labels, split_labels

log = logging.getLogger(__name__)

SEGMENT_FILES = {"balanced_train": "balanced_train_segments.csv", "eval": "eval_segments.csv",
                 "unbalanced_train": "unbalanced_train_segments.csv"}
YTID_LENGTH = 11


def read_segments(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(ytid, labels)`` rows of a segments CSV (``#`` comment lines skipped)."""
    with path.open(newline="") as f:
        lines = (line for line in f if line.strip() and not line.startswith("#"))
        rows = []
        for row in csv.reader(lines, skipinitialspace=True):
            if len(row) < 4:
                raise ValueError(f"{path}: malformed segment row {row!r} (YTID, start, end, labels expected)")
            # the labels are one quoted field in the official CSVs; unquoted, they spill into the fields after it
            rows.append((row[0].strip(), split_labels(",".join(row[3:]))))
    return rows


def clip_ids(stem: str) -> list[str]:
    """YouTube ids a file stem can stand for: ``<ytid>``, ``<ytid>_...``, ``Y<ytid>``, ``Y<ytid>_...``."""
    ids = []
    if len(stem) == YTID_LENGTH or stem[YTID_LENGTH:YTID_LENGTH + 1] == "_":
        ids.append(stem[:YTID_LENGTH])
    if stem.startswith("Y") and (len(stem) == YTID_LENGTH + 1 or stem[YTID_LENGTH + 1:YTID_LENGTH + 2] == "_"):
        ids.append(stem[1:YTID_LENGTH + 1])
    return ids


def index_clips(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, Path]:
    """Map YouTube id -> clip file for every audio file below ``root`` but not in ``skip``.

    Where several files stand for one id (a clip and a converted copy of it), the first in sorted order wins and
    the others are logged, so that which one a manifest names is never a silent choice."""
    index: dict[str, Path] = {}
    others: dict[str, list[Path]] = {}
    for path in find_audio(root, skip):
        for ytid in clip_ids(path.stem):
            if index.setdefault(ytid, path) != path:
                others.setdefault(ytid, []).append(path)
    if others:
        ytid = next(iter(others))
        log.warning("AudioSet: %d YouTube id(s) match more than one file; the first in sorted order is used, e.g. "
                    "%s: %s (not %s)", len(others), ytid, index[ytid], ", ".join(map(str, others[ytid])))
    return index


def prepare(root: Path, out: Path) -> Corpus:
    labels = read_class_labels(require(root / "class_labels_indices.csv", "AudioSet class_labels_indices.csv"))
    present = {split: root / name for split, name in SEGMENT_FILES.items() if (root / name).is_file()}
    if not present:
        raise FileNotFoundError(f"{root}: none of {', '.join(SEGMENT_FILES.values())} found")
    clips = index_clips(root, skip=(out,))
    entries, missing = [], []
    for split, csv_path in present.items():
        rows = read_segments(csv_path)
        for ytid, mids in rows:
            unknown = [m for m in mids if m not in labels]
            if unknown:
                raise ValueError(f"{csv_path}: {ytid} has label(s) {', '.join(unknown)} not in class_labels_indices")
        split_missing = [f"{split}\t{ytid}" for ytid, _ in rows if ytid not in clips]
        entries += [Entry(str(clips[ytid]), mids, split) for ytid, mids in rows if ytid in clips]
        missing += split_missing
        log.info("AudioSet %s: %d of %d segments found", split, len(rows) - len(split_missing), len(rows))
    if missing:
        log.warning("AudioSet: %d segment(s) have no downloaded clip (listed in missing.txt)", len(missing))
    return Corpus("audioset", entries, labels, (), missing)
