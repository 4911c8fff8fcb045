"""What every corpus recipe returns, and the few file-system helpers they share."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ssamba.data.manifest import ClassLabels, Entry

log = logging.getLogger(__name__)

#: suffixes treated as audio when scanning folders (what libsndfile reads)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf",
                            ".w64", ".rf64", ".sph", ".nist"})


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


def find_audio(root: Path) -> Iterator[Path]:
    """Audio files under ``root``, recursively, sorted, skipping hidden files (e.g. macOS ``._`` forks)."""
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".") and path.is_file():
            yield path


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
