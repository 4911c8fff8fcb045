"""ESC-50 (``meta/esc50.csv`` + ``audio/``): 2,000 5-s clips, 50 classes, 5 cross-validation folds.

Class index = the ``target`` column (the official order); split = ``fold1``..``fold5``.
"""
from __future__ import annotations

from pathlib import Path

from ssamba.data.corpora._common import Corpus, keep_existing, read_metadata, require
from ssamba.data.manifest import ClassLabels, Entry


def prepare(root: Path, out: Path) -> Corpus:
    meta = require(root / "meta" / "esc50.csv", "ESC-50 metadata meta/esc50.csv")
    rows = read_metadata(meta, ("filename", "fold", "target", "category"), integers=("fold", "target"))
    names: dict[int, str] = {}
    for row in rows:
        target, category = int(row["target"]), row["category"]
        if names.setdefault(target, category) != category:
            raise ValueError(f"{meta}: target {target} is both {names[target]!r} and {category!r}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{meta}: targets are not 0..{len(names) - 1}")
    labels = ClassLabels.from_names(names[i] for i in range(len(names)))
    entries = [Entry(str(root / "audio" / row["filename"]), (row["category"],), f"fold{int(row['fold'])}")
               for row in rows]
    missing: list[str] = []
    entries = keep_existing(entries, missing)
    folds = tuple(f"fold{k}" for k in sorted({int(row["fold"]) for row in rows}))
    return Corpus("esc50", entries, labels, folds, missing)
