"""What every corpus recipe returns, and the few file-system helpers they share."""
from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ssamba.audio.io import AUDIO_SUFFIXES
from ssamba.data.manifest import ClassLabels, Entry

log = logging.getLogger(__name__)

#: file that marks a folder as a resampling cache (``ssamba.data.cache``): its copies are not corpus audio
CACHE_MARKER = ".ssamba-cache"


@dataclass
class Corpus:
    """A corpus turned into manifest entries.

    ``folds`` names the splits of a cross-validation corpus (ESC-50, UrbanSound8K, IEMOCAP): each fold is in turn
    the evaluation set and the others the training set. ``missing`` lists what the metadata names but the disk
    lacks; preparation reports it instead of dropping it silently.
    """

    name: str
    entries: list[Entry]
    labels: ClassLabels | None
    folds: tuple[str, ...] = ()
    missing: list[str] = field(default_factory=list)

    def splits(self) -> list[str]:
        """Split names in order of first appearance."""
        return list(dict.fromkeys(e.split for e in self.entries if e.split is not None))


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a FileNotFoundError saying which part of the corpus layout is missing."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found; is --root the corpus's download folder?")
    return path


def read_metadata(path: Path, columns: tuple[str, ...], integers: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of a corpus's metadata CSV (a UTF-8 byte-order mark is allowed), checked: every column in ``columns``
    present, every column in ``integers`` an integer. Errors name the file and the line."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        absent = [c for c in columns if c not in (reader.fieldnames or ())]
        if absent:
            raise ValueError(f"{path}: column(s) {', '.join(absent)} missing (header: {reader.fieldnames})")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        for column in integers:
            try:
                row[column] = str(int(row[column]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: {column} is {row[column]!r}, not an integer") from None
    return rows


def find_audio(root: Path, skip: Iterable[Path] = ()) -> Iterator[Path]:
    """Audio files under ``root``, recursively and sorted, following symlinked folders (corpora are often linked in
    from other disks). Hidden files and folders (``.ipynb_checkpoints``, macOS ``._`` forks) are skipped, and so are
    the folders in ``skip`` and resampling caches (folders holding :data:`CACHE_MARKER`) when they lie inside
    ``root``: an earlier run's output is not corpus audio. A dangling symlink is logged, never silently skipped."""
    found: list[Path] = []
    seen: set[str] = set()  # real paths of the folders walked: a symlink loop is walked once
    skipped = {os.path.realpath(p) for p in skip} - {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or real in skipped:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (Path(folder) / d / CACHE_MARKER).exists()]
        for name in files:
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            if path.is_file():
                found.append(path)
            else:
                log.warning("%s: skipped, a symlink to nothing (%s)", path, os.readlink(path))
    yield from sorted(found)


def keep_existing(entries: list[Entry], missing: list[str]) -> list[Entry]:
    """Entries whose file exists; the others are appended to ``missing`` (and logged once, in total)."""
    kept, before = [], len(missing)
    for e in entries:
        if Path(e.path).is_file():
            kept.append(e)
        else:
            missing.append(e.path)
    if len(missing) > before:
        log.warning("%d file(s) named by the metadata are missing, e.g. %s", len(missing) - before, missing[before])
    return kept
