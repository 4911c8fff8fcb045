"""A built-in, procedurally generated audio corpus: no download, seeded, exercising the whole pipeline.

Twelve sound classes come in pairs that share their building blocks but differ in time-frequency structure:

===================  =========================================================================================
``chirp_up``         exponential sweep upward (start 250-800 Hz, end 3-8x higher)
``chirp_down``       the same sweeps run downward: same average spectrum, opposite direction in time
``tones_up``         two successive tones, low then high (ratio 1.5-3)
``tones_down``       the same tones, high then low: same average spectrum, opposite order in time
``harmonic_low``     harmonic stack, fundamental 90-180 Hz, harmonics up to 4 kHz
``harmonic_high``    harmonic stack, fundamental 350-700 Hz
``am_tone``          tone (400-3000 Hz) whose amplitude is modulated at 3-10 Hz
``fm_tone``          tone (400-3000 Hz) whose frequency is modulated at 3-10 Hz by 10-25 %
``clicks_slow``      broadband click train at 2-5 clicks/s
``clicks_fast``      broadband click train at 12-25 clicks/s
``noise_low``        noise burst in a band centred at 250-800 Hz
``noise_high``       noise burst in a band centred at 2.5-5 kHz
===================  =========================================================================================

Each clip randomises its parameters, onset and duration, lies over coloured background noise at a random SNR
(0-20 dB) and is peak-normalised to a random level, so loudness carries no class information. Unlabeled clips for
pretraining mix one to three events of any class over the same backgrounds.

Every clip has its own random stream derived from ``(seed, stream, class, index)``, so a clip's audio depends only on
those and not on how many other clips are generated; the files are byte-identical for a given seed.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from ssamba.data.manifest import ClassLabels, Entry

if TYPE_CHECKING:
    from ssamba.data.prepare import PrepareReport

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SNR_DB = (0.0, 20.0)
PEAK = (0.3, 0.95)
FADE_S = 0.01
SPLIT_FRACTIONS = (("train", 0.70), ("validation", 0.15), ("test", 0.15))
UNLABELED_VALID_FRACTION = 0.1
_LABELED_STREAM, _UNLABELED_STREAM = 0, 1

Synth = Callable[[np.random.Generator, int], np.ndarray]


def _fade(n: int) -> np.ndarray:
    """Raised-cosine fade in/out so event edges do not add broadband clicks of their own."""
    ramp = min(int(FADE_S * SAMPLE_RATE), n // 2)
    env = np.ones(n)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[:ramp], env[n - ramp:] = rise, rise[::-1]
    return env


def _sine_of(freq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sine following the instantaneous frequency track ``freq`` (Hz per sample), random start phase."""
    return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi))


def _sweep(rng: np.random.Generator, n: int, upward: bool) -> np.ndarray:
    low = rng.uniform(250, 800)
    high = low * rng.uniform(3, 8)
    ratio = np.linspace(0.0, 1.0, n)
    freq = low * (high / low) ** (ratio if upward else 1 - ratio)
    return _sine_of(freq, rng)


def _tone_pair(rng: np.random.Generator, n: int, ascending: bool) -> np.ndarray:
    low = rng.uniform(300, 900)
    high = low * rng.uniform(1.5, 3.0)
    first, second = (low, high) if ascending else (high, low)
    half = n // 2
    gap = int(rng.uniform(0.0, 0.1) * half)
    out = np.zeros(n)
    for start, length, f in ((0, half - gap, first), (half, n - half, second)):
        out[start:start + length] = _sine_of(np.full(length, f), rng) * _fade(length)
    return out


def _harmonic(rng: np.random.Generator, n: int, f0_range: tuple[float, float]) -> np.ndarray:
    f0 = rng.uniform(*f0_range)
    count = int(4000 // f0)
    orders = np.arange(1, count + 1)
    amps = orders ** -rng.uniform(0.5, 1.5) * rng.uniform(0.5, 1.0, count)
    t = np.arange(n) / SAMPLE_RATE
    phases = rng.uniform(0, 2 * np.pi, count)
    return amps @ np.sin(2 * np.pi * f0 * orders[:, None] * t + phases[:, None])


def _am_tone(rng: np.random.Generator, n: int) -> np.ndarray:
    carrier = _sine_of(np.full(n, rng.uniform(400, 3000)), rng)
    rate, depth = rng.uniform(3, 10), rng.uniform(0.7, 1.0)
    t = np.arange(n) / SAMPLE_RATE
    return carrier * (1 - depth * (0.5 + 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))))


def _fm_tone(rng: np.random.Generator, n: int) -> np.ndarray:
    centre, rate, deviation = rng.uniform(400, 3000), rng.uniform(3, 10), rng.uniform(0.10, 0.25)
    t = np.arange(n) / SAMPLE_RATE
    return _sine_of(centre * (1 + deviation * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))), rng)


def _clicks(rng: np.random.Generator, n: int, rate_range: tuple[float, float]) -> np.ndarray:
    rate = rng.uniform(*rate_range)
    period = SAMPLE_RATE / rate
    starts = np.arange(rng.uniform(0, period), n, period)
    starts = np.clip(starts + rng.normal(0, 0.05 * period, len(starts)), 0, n - 1).astype(int)
    width = int(0.003 * SAMPLE_RATE)  # 3-ms decaying noise burst per click
    click = rng.standard_normal((len(starts), width)) * np.exp(-np.arange(width) / (width / 4))
    out = np.zeros(n + width)
    np.add.at(out, starts[:, None] + np.arange(width), click)
    return out[:n]


def _band_noise(rng: np.random.Generator, n: int, centre_range: tuple[float, float]) -> np.ndarray:
    centre = rng.uniform(*centre_range)
    half_octaves = rng.uniform(0.5, 1.0)  # bandwidth of 1-2 half-octaves around the centre
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[np.abs(np.log2(np.maximum(freqs, 1.0) / centre)) > half_octaves / 2] = 0
    return np.fft.irfft(spectrum, n)


@dataclass(frozen=True)
class SoundClass:
    """A class name and the synthesiser of one event of it, ``synth(rng, samples) -> samples``."""

    name: str
    synth: Synth


CLASSES: tuple[SoundClass, ...] = (
    SoundClass("chirp_up", lambda rng, n: _sweep(rng, n, True)),
    SoundClass("chirp_down", lambda rng, n: _sweep(rng, n, False)),
    SoundClass("tones_up", lambda rng, n: _tone_pair(rng, n, True)),
    SoundClass("tones_down", lambda rng, n: _tone_pair(rng, n, False)),
    SoundClass("harmonic_low", lambda rng, n: _harmonic(rng, n, (90, 180))),
    SoundClass("harmonic_high", lambda rng, n: _harmonic(rng, n, (350, 700))),
    SoundClass("am_tone", _am_tone),
    SoundClass("fm_tone", _fm_tone),
    SoundClass("clicks_slow", lambda rng, n: _clicks(rng, n, (2, 5))),
    SoundClass("clicks_fast", lambda rng, n: _clicks(rng, n, (12, 25))),
    SoundClass("noise_low", lambda rng, n: _band_noise(rng, n, (250, 800))),
    SoundClass("noise_high", lambda rng, n: _band_noise(rng, n, (2500, 5000))),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
_BY_NAME = {c.name: (i, c) for i, c in enumerate(CLASSES)}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) or 1.0


def background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS coloured noise, spectral slope ``1/f^a`` with ``a`` in [0, 1.5] (white to beyond pink)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    noise = np.fft.irfft(spectrum * freqs ** (-rng.uniform(0.0, 1.5) / 2), n)
    return noise / _rms(noise)


def place_event(rng: np.random.Generator, sound: SoundClass, n: int, min_fraction: float = 0.4) -> np.ndarray:
    """One event of ``sound`` lasting ``min_fraction``-90 % of the clip at a random onset, unit RMS over its span."""
    length = int(rng.uniform(min_fraction, 0.9) * n)
    onset = int(rng.integers(0, n - length + 1))
    event = sound.synth(rng, length) * _fade(length)
    out = np.zeros(n)
    out[onset:onset + length] = event / _rms(event)
    return out


def mix(rng: np.random.Generator, signal: np.ndarray) -> np.ndarray:
    """``signal`` over background noise at a random SNR, peak-normalised to a random level, as float32."""
    snr_db = rng.uniform(*SNR_DB)
    noise = background(rng, len(signal))
    x = signal * (10 ** (snr_db / 20) / _rms(signal)) + noise
    return (x * (rng.uniform(*PEAK) / np.abs(x).max())).astype(np.float32)


def labeled_clip(name: str, index: int, *, seed: int = 0, duration: float = 1.0) -> np.ndarray:
    """Clip ``index`` of class ``name``: float32 ``(samples,)`` at 16 kHz in [-1, 1]."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown synthetic class {name!r}; known: {', '.join(CLASS_NAMES)}")
    class_index, sound = _BY_NAME[name]
    rng = np.random.default_rng([seed, _LABELED_STREAM, class_index, index])
    return mix(rng, place_event(rng, sound, int(round(duration * SAMPLE_RATE))))


def unlabeled_clip(index: int, *, seed: int = 0, duration: float = 1.0,
                   classes: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Unlabeled clip ``index``: one to three events of random classes at random gains over a background."""
    rng = np.random.default_rng([seed, _UNLABELED_STREAM, index])
    n = int(round(duration * SAMPLE_RATE))
    signal = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        sound = _BY_NAME[classes[int(rng.integers(len(classes)))]][1]
        signal += place_event(rng, sound, n, min_fraction=0.2) * 10 ** (rng.uniform(-10, 0) / 20)
    return mix(rng, signal)


def split_sizes(count: int) -> list[tuple[str, int]]:
    """Per-class 70/15/15 split of ``count`` clips; validation and test get one clip each as soon as possible."""
    val = max(round(count * SPLIT_FRACTIONS[1][1]), 1 if count >= 3 else 0)
    test = max(round(count * SPLIT_FRACTIONS[2][1]), 1 if count >= 2 else 0)
    return [("train", count - val - test), ("validation", val), ("test", test)]


def _write(path: Path, clip: np.ndarray) -> str:
    """16-bit WAV, encoded in memory and written at once (libsndfile's in-place header rewrite is slow on some
    file systems)."""
    buffer = io.BytesIO()
    sf.write(buffer, clip, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return str(path)


def write_clips(out: str | Path, *, clips_per_class: int, unlabeled: int, duration: float = 1.0, seed: int = 0,
                classes: Sequence[str] | None = None) -> tuple[list[Entry], ClassLabels]:
    """Synthesise and write every clip under ``out/audio``; return the manifest entries and the class set.

    Labeled entries carry splits ``train``/``validation``/``test`` (stratified per class); unlabeled ones
    ``unlabeled`` and, for the last ~10 %, ``unlabeled_valid`` (a held-out set for pretraining validation).
    """
    names = tuple(classes) if classes is not None else CLASS_NAMES
    unknown = [c for c in names if c not in _BY_NAME]
    if unknown or len(set(names)) != len(names) or not names:
        raise ValueError(f"classes must be distinct names among {', '.join(CLASS_NAMES)}; got {list(names)}")
    if clips_per_class < 1 or unlabeled < 0 or duration < 0.1:
        raise ValueError(f"need clips_per_class >= 1, unlabeled >= 0 and duration >= 0.1 s; got "
                         f"{clips_per_class}, {unlabeled}, {duration}")
    audio = Path(out).resolve() / "audio"
    entries: list[Entry] = []
    splits = [split for split, size in split_sizes(clips_per_class) for _ in range(size)]
    for name in names:
        for index, split in enumerate(splits):
            path = _write(audio / name / f"{name}_{index:04d}.wav",
                          labeled_clip(name, index, seed=seed, duration=duration))
            entries.append(Entry(path, (name,), split))
    held_out = max(round(unlabeled * UNLABELED_VALID_FRACTION), 1) if unlabeled >= 2 else 0
    for i in range(unlabeled):
        path = _write(audio / "unlabeled" / f"unlabeled_{i:05d}.wav",
                      unlabeled_clip(i, seed=seed, duration=duration, classes=names))
        entries.append(Entry(path, (), "unlabeled_valid" if i >= unlabeled - held_out else "unlabeled"))
    log.info("synthetic corpus: %d classes x %d clips + %d unlabeled -> %s", len(names), clips_per_class,
             unlabeled, audio)
    return entries, ClassLabels.from_names(names)


def make_corpus(out_dir: str | Path, *, clips_per_class: int, unlabeled: int, duration: float = 1.0,
                seed: int = 0, classes: Sequence[str] | None = None) -> PrepareReport:
    """Generate the corpus into ``out_dir``: audio under ``audio/`` and the manifests ``ssamba prepare`` writes
    (``train``/``validation``/``test``/``unlabeled``/``unlabeled_valid`` ``.json``, ``all.csv``,
    ``class_labels_indices.csv``)."""
    from ssamba.data.prepare import prepare

    return prepare("synthetic", None, out_dir, clips_per_class=clips_per_class, unlabeled=unlabeled,
                   duration=duration, seed=seed, classes=classes)
