"""Corpora defined by folders alone: LibriSpeech and any folder of audio (unlabeled, for pretraining), and a
folder-per-class tree (labeled by the top-level folder name)."""
from __future__ import annotations

import logging
from pathlib import Path

from ssamba.data.corpora._common import Corpus, find_audio
from ssamba.data.manifest import ClassLabels, Entry

log = logging.getLogger(__name__)


def _nonempty(entries: list[Entry], root: Path) -> list[Entry]:
    if not entries:
        raise FileNotFoundError(f"{root}: no audio files found")
    return entries


def prepare_librispeech(root: Path, out: Path) -> Corpus:
    """``<subset>/<speaker>/<chapter>/*.flac``; split = the subset (``train-clean-100`` ...). ``root`` may be the
    ``LibriSpeech`` folder or one subset."""
    files = list(find_audio(root, skip=(out,)))
    is_subset = all(len(p.relative_to(root).parts) == 3 for p in files)
    entries = [Entry(str(p), (), root.name if is_subset else p.relative_to(root).parts[0]) for p in files]
    return Corpus("librispeech", _nonempty(entries, root), None)


def prepare_folder(root: Path, out: Path) -> Corpus:
    """Every audio file below ``root``, unlabeled."""
    return Corpus("folder", _nonempty([Entry(str(p)) for p in find_audio(root, skip=(out,))], root), None)


def prepare_folder_per_class(root: Path, out: Path) -> Corpus:
    """``<class>/**/<file>``: the label is the top-level folder; classes in sorted order. Files directly in ``root``
    have no class and are an error."""
    files = list(find_audio(root, skip=(out,)))
    loose = [p for p in files if p.parent == root]
    if loose:
        raise ValueError(f"{loose[0]}: file outside any class folder (expected <root>/<class>/...)")
    entries = [Entry(str(p), (p.relative_to(root).parts[0],)) for p in files]
    classes = sorted({e.labels[0] for e in entries})
    empty = sorted(d.name for d in root.iterdir()
                   if d.is_dir() and not d.name.startswith(".") and d.name not in classes and d.resolve() != out.resolve())
    if empty:
        log.warning("%s: %d class folder(s) without audio, not made classes: %s", root, len(empty), ", ".join(empty))
    return Corpus("folder-per-class", _nonempty(entries, root), ClassLabels.from_names(classes))
