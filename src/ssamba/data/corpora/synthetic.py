"""The built-in synthetic corpus (:mod:`ssamba.data.synthetic`): generated into ``out``, so it needs no ``--root``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssamba.data import synthetic
from ssamba.data.corpora._common import Corpus


def prepare(root: Path, out: Path, *, clips_per_class: int = 50, unlabeled: int = 600, duration: float = 1.0,
            seed: int = 0, classes: Sequence[str] | None = None) -> Corpus:
    """Write the clips under ``out/audio`` and return their entries (``root`` is unused)."""
    entries, labels = synthetic.write_clips(out, clips_per_class=clips_per_class, unlabeled=unlabeled,
                                            duration=duration, seed=seed, classes=classes)
    return Corpus("synthetic", entries, labels)
