"""UrbanSound8K (``metadata/UrbanSound8K.csv`` + ``audio/fold{1..10}/``): 8,732 clips, 10 classes, 10 folds.

Class index = ``classID``; split = ``fold1``..``fold10``. (SSAMBA's Urban8K task concatenates clips into 60-s
inputs at training time: ssamba.data.sequences.)
"""
from __future__ import annotations

from pathlib import Path

from ssamba.data.corpora._common import Corpus, keep_existing, read_metadata, require
from ssamba.data.manifest import ClassLabels, Entry


def prepare(root: Path, out: Path) -> Corpus:
    meta = require(root / "metadata" / "UrbanSound8K.csv", "UrbanSound8K metadata metadata/UrbanSound8K.csv")
    rows = read_metadata(meta, ("slice_file_name", "fold", "classID", "class"), integers=("fold", "classID"))
    names: dict[int, str] = {}
    for row in rows:
        class_id, name = int(row["classID"]), row["class"]
        if names.setdefault(class_id, name) != name:
            raise ValueError(f"{meta}: classID {class_id} is both {names[class_id]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{meta}: classIDs are not 0..{len(names) - 1}")
    labels = ClassLabels.from_names(names[i] for i in range(len(names)))
    entries = [Entry(str(root / "audio" / f"fold{int(row['fold'])}" / row["slice_file_name"]), (row["class"],),
                     f"fold{int(row['fold'])}") for row in rows]
    missing: list[str] = []
    entries = keep_existing(entries, missing)
    folds = tuple(f"fold{k}" for k in sorted({int(row["fold"]) for row in rows}))
    return Corpus("urbansound8k", entries, labels, folds, missing)
