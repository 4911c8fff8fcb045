"""Training checkpoints: everything needed to continue a run exactly, written atomically.

Model, optimiser, schedule, grad scaler, step/epoch/position in the epoch, best metric, and the RNG states of every
rank (python, numpy, torch, CUDA), so a resumed run draws the same masks, drop paths and augmentations.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssamba.atomic import atomic_write

logger = logging.getLogger(__name__)

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` into ``directory/last.pt`` atomically (``ssamba.atomic``)."""
    return atomic_write(Path(directory) / LAST, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training checkpoint to resume from")
    try:
        # our own files: they hold optimizer state and RNG tuples, which need the full unpickler
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot read the training checkpoint (corrupt or truncated?): {exc}") from exc
