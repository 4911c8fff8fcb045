"""What users pass to ``predict``/``embed`` (paths, folders, numpy or torch waveforms, batches) turned into named,
lazily loaded, validated mono 16 kHz clips.  Every problem becomes an :class:`AudioLoadError` naming its source."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssamba.audio._tensor import as_float_tensor
from ssamba.audio.features import SAMPLE_RATE
from ssamba.audio.io import AUDIO_SUFFIXES, AudioLoadError, MonoPolicy, load_audio
from ssamba.audio.resample import resample

#: shortest usable clip: one 25 ms analysis window
MIN_SAMPLES = 400

Audio = str | Path | np.ndarray | Tensor


@dataclass
class Source:
    """A named clip that is loaded only when needed (files are read batch by batch, not all at once)."""

    name: str
    load: Callable[[], Tensor]  # -> (samples,) float32 at 16 kHz, validated


def audio_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) into audio files; files are kept as given, even missing ones, and so is
    a folder without audio, so that they are reported (as failed inputs) rather than dropped or fatal."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            out.extend(found or [p])
        else:
            out.append(p)
    return out


def as_sources(audio: Audio | Iterable[Audio], sample_rate: int = SAMPLE_RATE,
               mono: MonoPolicy = "first") -> tuple[list[Source], bool]:
    """``(sources, single)``: ``single`` when one clip (a path or a 1-D waveform) was given rather than a batch.

    Arrays are ``(samples,)`` for one clip or ``(batch, samples)`` for a batch of equally long clips, at
    ``sample_rate`` (resampled to 16 kHz).  Multichannel audio must be reduced first (arrays) or is reduced by the
    ``mono`` policy (files: channel 0 by default, as the official pipeline).
    """
    sample_rate = _check_rate(sample_rate)
    if isinstance(audio, (str, Path)):
        items, single = audio_files([audio]), not Path(audio).is_dir()
    elif isinstance(audio, (np.ndarray, Tensor)):
        if audio.ndim == 1:
            items, single = [audio], True
        elif audio.ndim == 2:
            if audio.shape[1] < MIN_SAMPLES <= audio.shape[0]:  # no batch of clips this short: it is channels last
                raise ValueError(f"a waveform array of shape {tuple(audio.shape)} is read as (batch, samples): "
                                 f"{audio.shape[0]} clips of {audio.shape[1]} samples. If it is (samples, channels), "
                                 "as soundfile.read returns, pass one channel (x[:, 0]) or their mean (x.mean(1))")
            items, single = list(audio), False
        else:
            raise ValueError(f"a waveform array must be (samples,) or (batch, samples), got shape {tuple(audio.shape)}")
    else:
        items, single = list(audio), False
        if any(isinstance(i, (str, Path)) and Path(i).is_dir() for i in items):
            items = [p for i in items for p in (audio_files([i]) if isinstance(i, (str, Path)) else [i])]
    return [_source(item, k, sample_rate, mono) for k, item in enumerate(items)], single


def _source(item: Audio, index: int, sample_rate: int, mono: MonoPolicy) -> Source:
    if isinstance(item, (str, Path)):
        path = Path(item)
        return Source(str(path), lambda: _load_file(path, mono))
    if isinstance(item, (np.ndarray, Tensor)):
        name = f"<array {index}>"
        return Source(name, lambda: _from_array(item, name, sample_rate))
    raise TypeError(f"item {index}: expected a path or a numpy/torch waveform, got {type(item).__name__}")


def _load_file(path: Path, mono: MonoPolicy) -> Tensor:
    if path.is_dir():  # kept by audio_files so that it is reported
        raise AudioLoadError(path, f"folder holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return _check(load_audio(path, mono=mono, sample_rate=SAMPLE_RATE)[0][0], path)


def _from_array(array: np.ndarray | Tensor, name: str, sample_rate: int) -> Tensor:
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise AudioLoadError(name, f"expected a mono waveform (samples,), got shape {tuple(array.shape)}; "
                                   "reduce channels first (e.g. waveform.mean(0))")
    try:
        x = as_float_tensor(array).detach().to("cpu", torch.float32)
    except (TypeError, ValueError) as exc:
        raise AudioLoadError(name, str(exc)) from exc
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise AudioLoadError(name, f"{bad} of {x.numel()} samples are NaN or infinite")
    if sample_rate != SAMPLE_RATE and x.numel():
        x = resample(x, sample_rate, SAMPLE_RATE)
    return _check(x, name)


def _check(x: Tensor, name: str | Path) -> Tensor:
    if x.numel() < MIN_SAMPLES:
        raise AudioLoadError(name, f"too short: {x.numel()} samples at 16 kHz ({x.numel() / SAMPLE_RATE * 1000:.1f} "
                                   f"ms); at least {MIN_SAMPLES} (one 25 ms analysis window) are needed")
    return x.contiguous()


def _check_rate(sample_rate: int) -> int:
    ok = isinstance(sample_rate, (int, float, np.integer, np.floating)) and not isinstance(sample_rate, bool)
    if not ok or not math.isfinite(sample_rate) or sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    return int(sample_rate)
