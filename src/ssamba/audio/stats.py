"""Normalisation statistics: the official per-dataset presets and a streaming estimator over a manifest.

The official numbers (spec §10) are the mean and std of the *unnormalised, padded* log-mel inputs of each dataset;
they must match the checkpoint, not the data, when fine-tuning released weights.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormStats:
    """Mean and std of log-mel inputs, used as ``(x - mean) / (2 * std)``."""

    mean: float
    std: float


AUDIOSET = NormStats(-4.2677393, 4.5689974)
ESC50 = NormStats(-6.6268077, 5.358466)
SPEECHCOMMANDS = NormStats(-6.845978, 5.5654526)
URBANSOUND8K = NormStats(-5.138443946838379, 4.229961395263672)

#: the official statistics by dataset name (SSAMBA pretraining uses AudioSet's)
PRESETS: dict[str, NormStats] = {
    "audioset": AUDIOSET,
    "esc50": ESC50,
    "speechcommands": SPEECHCOMMANDS,
    "urbansound8k": URBANSOUND8K,
}


def preset(name: str) -> NormStats:
    """Official statistics of ``name`` (case and ``-``/``_`` insensitive)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in PRESETS:
        raise ValueError(f"no statistics preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]


class RunningStats:
    """Exact mean/std of every value ever added, merged chunk by chunk in float64 (Chan et al.), so the memory use
    is one clip and no sum of squares loses precision."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def update(self, values: torch.Tensor) -> None:
        x = values.detach().to(torch.float64).flatten()
        n = x.numel()
        if n == 0:
            return
        mean = float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self._m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Sample standard deviation (``torch.std``'s default, ddof=1)."""
        return math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else float("nan")


@dataclass(frozen=True)
class StatsResult:
    """Statistics of a file list, and the files that could not be read (skipped, with the reason)."""

    mean: float
    std: float
    files: int
    values: int
    failures: tuple[tuple[str, str], ...]


def dataset_stats(paths: Iterable[str | Path], target_length: int | None = 1024, *, progress: bool = True
                  ) -> StatsResult:
    """Mean/std of the unnormalised model inputs of ``paths``, streaming (one clip in memory at a time).

    With ``target_length`` every clip is padded/cut first, as the official statistics were computed (the zero
    padding counts); ``None`` uses only real frames. Unreadable files are logged and skipped, not fatal.
    """
    # imported here: features.py takes its default statistics from this module
    from ssamba.audio.features import features
    from ssamba.audio.io import AudioLoadError, load_audio

    paths = list(paths)
    running, failures = RunningStats(), []
    for path in tqdm(paths, desc="statistics", unit="file", disable=None if progress else True):
        try:
            waveform, sr = load_audio(path)
        except AudioLoadError as exc:
            log.warning("skipping %s", exc)
            failures.append((exc.path, exc.reason))
            continue
        running.update(features(waveform, sr, target_length, None, None))
    if running.count == 0:
        raise ValueError(f"no readable audio among {len(paths)} file(s)")
    return StatsResult(running.mean, running.std, len(paths) - len(failures), running.count, tuple(failures))
