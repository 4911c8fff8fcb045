"""Reading audio files into float32 tensors, with an explicit mono policy and errors that name the file.

Everything libsndfile reads is supported (WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...). PCM is scaled to [-1, 1] exactly as
``torchaudio.load`` does (int16 / 32768), which is the scale the fbank and the released checkpoints expect.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

#: suffixes treated as audio when a folder is scanned, by ``ssamba prepare`` and by predict/embed alike (what
#: libsndfile reads)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf",
                            ".w64", ".rf64", ".sph", ".nist"})

#: ``"first"``: channel 0 (the official pipeline feeds only channel 0 to the fbank); ``"mean"``: average of all
#: channels; ``None``: keep every channel.
MonoPolicy = Literal["first", "mean"] | None


class AudioLoadError(ValueError):
    """A file that cannot be used as audio; the message always starts with the path and gives the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _soundfile():
    """soundfile, imported on first use: ``import ssamba`` (models, benchmarks) must not need libsndfile."""
    try:
        import soundfile
    except (ImportError, OSError) as exc:  # OSError: the package is there but libsndfile is not
        raise ImportError(f"reading and writing audio needs the 'soundfile' package and libsndfile ({exc}); "
                          "pip install soundfile") from exc
    return soundfile


def to_mono(waveform: torch.Tensor, policy: MonoPolicy) -> torch.Tensor:
    """Reduce ``(channels, samples)`` to ``(1, samples)`` by ``policy`` (``None`` returns it unchanged)."""
    if policy is None or waveform.shape[0] == 1:
        return waveform
    if policy == "first":
        return waveform[:1]
    if policy == "mean":
        return waveform.mean(dim=0, keepdim=True)
    raise ValueError(f"mono policy must be 'first', 'mean' or None, got {policy!r}")


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """``(sample_rate, frames, channels)`` from the header only, without decoding the samples."""
    path = Path(path)
    _check_file(path)
    sf = _soundfile()
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioLoadError(path, f"not a readable audio file ({exc})") from exc
    return int(info.samplerate), int(info.frames), int(info.channels)


def check_audio(path: str | Path) -> tuple[int, int, int]:
    """:func:`audio_info`, refusing a file without samples: what ``ssamba prepare`` checks of every clip, cheaply.

    Only the header is read, and one frame where the header counts none (some compressed formats misreport it), so
    damaged or empty clips are reported when the manifests are built, not at the first epoch that meets them."""
    rate, frames, channels = audio_info(path)
    if frames == 0:
        sf = _soundfile()
        try:
            with sf.SoundFile(str(path)) as f:
                frames = f.read(1, always_2d=True).shape[0]
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioLoadError(path, f"not a readable audio file ({exc})") from exc
        if frames == 0:
            raise AudioLoadError(path, "contains no audio samples")
    return rate, frames, channels


def load_audio(path: str | Path, *, mono: MonoPolicy = "first", sample_rate: int | None = None,
               allow_nonfinite: bool = False) -> tuple[torch.Tensor, int]:
    """Load ``path`` as float32 ``(channels, samples)`` in [-1, 1] and its sample rate.

    ``mono`` picks the channel policy (default: the official channel 0). With ``sample_rate`` the audio is resampled
    with the reference sinc resampler. Empty, unreadable, sample-less and NaN/Inf-containing files raise
    :class:`AudioLoadError` naming the file (NaN would poison the clip mean and with it every frame); set
    ``allow_nonfinite`` to get such samples back unchanged.
    """
    if mono not in ("first", "mean", None):
        raise ValueError(f"mono policy must be 'first', 'mean' or None, got {mono!r}")
    path = Path(path)
    _check_file(path)
    sf = _soundfile()
    try:
        waveform, sr, nonfinite, samples, peak = _read_blocks(sf, path, mono)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioLoadError(path, f"not a readable audio file ({exc})") from exc
    if waveform.shape[-1] == 0:
        raise AudioLoadError(path, "contains no audio samples")
    if nonfinite and not allow_nonfinite:
        raise AudioLoadError(path, f"{nonfinite} of {samples} samples are NaN or infinite")
    if not nonfinite and peak > 1.0 + 1e-6:
        log.warning("%s: peak %.3g exceeds 1.0 (float file not in [-1, 1]?); log-mels shift by 2*ln(scale)", path, peak)
    if sample_rate is not None and sample_rate != sr:
        from ssamba.audio.resample import resample

        waveform, sr = resample(waveform, sr, sample_rate), sample_rate
    return waveform, int(sr)


#: frames decoded at a time: a long multichannel file is reduced to its mono policy block by block, so only the
#: result is held whole (an hour of 44.1 kHz stereo once took ~4 GB just to load)
READ_BLOCK_FRAMES = 1 << 20


def _read_blocks(sf, path: Path, mono: MonoPolicy) -> tuple[torch.Tensor, int, int, int, float]:
    """Decode ``path`` block by block into float32 ``(channels after the mono policy, samples)``; also the
    sample rate, the count of non-finite samples, the count of all samples and the peak |sample| (all three of the
    channels the policy keeps)."""
    nonfinite, samples, peak = 0, 0, 0.0
    with sf.SoundFile(str(path)) as f:
        sr, expected = f.samplerate, max(int(f.frames), 0)
        out = torch.empty(f.channels if mono is None else 1, expected)
        extra: list[torch.Tensor] = []  # past the header's frame count (some compressed formats misreport it)
        position = 0
        while True:
            block = f.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            reduced = to_mono(torch.from_numpy(np.ascontiguousarray(block.T)), mono)
            # judged on what is kept: a NaN in a channel the mono policy drops harms nothing
            bad = reduced.numel() - int(torch.isfinite(reduced).sum())
            nonfinite, samples = nonfinite + bad, samples + reduced.numel()
            if not bad:
                peak = max(peak, float(reduced.abs().max()))
            fits = max(0, min(reduced.shape[-1], expected - position))
            out[:, position:position + fits] = reduced[:, :fits]
            if fits < reduced.shape[-1]:
                extra.append(reduced[:, fits:])
            position += reduced.shape[-1]
    if extra:
        return torch.cat([out, *extra], dim=-1), int(sr), nonfinite, samples, peak
    waveform = out if position == expected else out[:, :position].clone()
    return waveform, int(sr), nonfinite, samples, peak


def save_audio(path: str | Path, waveform: torch.Tensor, sample_rate: int, subtype: str = "FLOAT") -> None:
    """Write ``(channels, samples)`` to ``path`` (format from the suffix); float WAV by default so nothing is
    re-quantised."""
    data = torch.as_tensor(waveform).detach().cpu().float()
    if data.ndim == 1:
        data = data[None]
    _soundfile().write(str(path), data.T.numpy(), int(sample_rate), subtype=subtype)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioLoadError(path, "file not found")
    if not path.is_file():
        raise AudioLoadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise AudioLoadError(path, "empty file (0 bytes)")
