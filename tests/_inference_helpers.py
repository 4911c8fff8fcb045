"""Models and audio for the inference tests.

Full-depth runs of the official fixtures check exactness on short clips; long inputs (30 s, 10 min, 20 min) use the
same real weights cut to the first ``depth`` blocks (saved in our format) so that they process every sample of that
much audio while staying cheap on a 2-core CPU.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import ssamba
from ssamba.models.classifier import AudioClassifier
from ssamba.pretrain.model import MaskedPatchModel

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "fixtures" / "official"
FINETUNE = OFFICIAL / "official_tiny_finetune_t256.pth"
PRETRAIN = OFFICIAL / "official_tiny_pretrain.pth"
TTS = SHARED / "data" / "tts-commands"
LABELS = [f"label{k}" for k in range(10)]


def shallow_copy(path: Path, out: Path, depth: int = 2, **load_options) -> Path:
    """Save the official checkpoint at ``path`` with only its first ``depth`` blocks into ``out`` (our format)."""
    full = ssamba.load(path, **load_options)
    config = copy.deepcopy(full.config)
    config.encoder.depth = depth
    cls = AudioClassifier if config.task == "classify" else MaskedPatchModel
    model = cls(config)
    keep = {k: v for k, v in full.state_dict().items()
            if not k.startswith("encoder.layers.") or int(k.split(".")[2]) < depth}
    model.load_state_dict(keep)
    return model.save_pretrained(out)


def tone(seconds: float, sr: int = 16000, freq: float = 440.0, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise (so every mel bin carries signal), float32."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    noise = np.random.default_rng(seed).normal(0, 0.01, n)
    return (amplitude * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, sr: int = 16000, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def tts_files(word: str, count: int) -> list[Path]:
    return sorted((TTS / word).glob("*.wav"))[:count]


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (restored afterwards): the sequential scan of tiny tensors only loses to
    thread synchronisation on a shared 2-core machine.  Speed only; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
