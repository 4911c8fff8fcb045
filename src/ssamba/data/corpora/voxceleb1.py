"""VoxCeleb1 speaker identification from ``iden_split.txt`` (``<1|2|3> idXXXXX/<video>/<utt>.wav``).

Audio is looked up in ``<root>/wav/`` (the merged dev+test download) or directly under ``root``. 1 = train,
2 = validation, 3 = test; the classes are the speakers of the split file in sorted order (1,251 in the full set).
"""
from __future__ import annotations

from pathlib import Path

from ssamba.data.corpora._common import Corpus, keep_existing, require
from ssamba.data.manifest import ClassLabels, Entry

SPLIT_CODES = {"1": "train", "2": "validation", "3": "test"}


def prepare(root: Path, out: Path) -> Corpus:
    split_file = require(root / "iden_split.txt", "VoxCeleb1 identification split iden_split.txt")
    audio_root = root / "wav" if (root / "wav").is_dir() else root
    entries = []
    for number, line in enumerate(split_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLIT_CODES or "/" not in parts[1]:
            raise ValueError(f"{split_file}:{number}: expected '<1|2|3> idXXXXX/<video>/<utt>.wav', got {line!r}")
        code, rel = parts
        entries.append(Entry(str(audio_root / rel), (rel.split("/")[0],), SPLIT_CODES[code]))
    speakers = sorted({e.labels[0] for e in entries})
    missing: list[str] = []
    entries = keep_existing(entries, missing)
    return Corpus("voxceleb1", entries, ClassLabels.from_names(speakers), (), missing)
