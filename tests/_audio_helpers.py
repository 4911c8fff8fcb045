"""Shared paths and small builders for the audio/data tests (fixtures live in ../shared, never in the repo)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FRONTEND = SHARED / "fixtures" / "frontend"
TTS_COMMANDS = SHARED / "data" / "tts-commands"


@lru_cache(maxsize=None)
def fixture(name: str) -> dict[str, np.ndarray]:
    """All arrays of ``<name>.npz`` (loaded once per session)."""
    with np.load(FRONTEND / f"{name}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_tone(path: Path, seconds: float = 0.5, sr: int = 16000, freq: float = 440.0, channels: int = 1,
               subtype: str = "PCM_16", amplitude: float = 0.3) -> np.ndarray:
    """A sine (channel c at ``freq*(c+1)``) written to ``path``; returns the samples as written ``(N, C)``."""
    t = np.arange(int(seconds * sr)) / sr
    data = np.stack([amplitude * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sr, subtype=subtype)
    return data


def write_fold_manifests(root: Path, per_fold: dict[str, list[dict]], class_names: list[str]) -> None:
    """``fold<k>_train.json`` / ``fold<k>_eval.json`` and ``labels.csv`` as ``ssamba prepare`` writes them for a
    cross-validation corpus: each fold is the evaluation set once, the other folds its training set. The entries'
    labels are ``c0``, ``c1``, ... and ``class_names`` their display names."""
    for fold, entries in per_fold.items():
        train = [e for other, es in per_fold.items() if other != fold for e in es]
        (root / f"{fold}_train.json").write_text(json.dumps({"data": train}))
        (root / f"{fold}_eval.json").write_text(json.dumps({"data": entries}))
    (root / "labels.csv").write_text("index,mid,display_name\n"
                                     + "".join(f"{i},c{i},{name}\n" for i, name in enumerate(class_names)))
