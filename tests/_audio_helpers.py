"""Shared paths and small builders for the audio/data tests (fixtures live in ../shared, never in the repo)."""
from __future__ import annotations

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
