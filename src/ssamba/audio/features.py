"""The whole waveform -> model-input pipeline, in the official order (spec §11).

resample to 16 kHz -> remove the clip mean -> log-mel fbank -> zero-pad or cut to ``target_length`` frames (in the
raw log-mel domain, so padded rows become ``-mean/(2*std)``) -> ``(x - mean) / (2 * std)``. Training-time
augmentation slots in between (see :mod:`ssamba.audio.augment`): SpecAugment after padding, noise after
normalisation. The official dataloader never resampled (its preparation scripts did, offline); resampling here is
the same reference resampler, so 16 kHz files take exactly the official path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssamba.audio._tensor import as_float_tensor
from ssamba.audio.fbank import ShortPolicy, fbank_batch, one_clip
from ssamba.audio.resample import KernelVariant, resample
from ssamba.audio.stats import AUDIOSET

#: the rate every model was trained at
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class FeatureConfig:
    """How waveforms become ``(target_length, 128)`` inputs. Defaults: SSAMBA pretraining (AudioSet stats, 1024
    frames); use the per-dataset presets of :mod:`ssamba.audio.stats` for fine-tuning."""

    target_length: int = 1024
    mean: float = AUDIOSET.mean
    std: float = AUDIOSET.std
    normalize: bool = True  # False reproduces the official ``skip_norm`` (used to compute statistics)
    short: ShortPolicy = "pad"
    resample_variant: KernelVariant = "functional"

    def __post_init__(self) -> None:
        if self.target_length < 1:
            raise ValueError(f"target_length must be positive, got {self.target_length}")
        if self.normalize and not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")


def fit_length(fbank: torch.Tensor, target_length: int) -> torch.Tensor:
    """Zero-pad (at the end) or cut ``(..., frames, bins)`` to ``target_length`` frames, as the official loader."""
    missing = target_length - fbank.shape[-2]
    if missing > 0:
        return F.pad(fbank, (0, 0, 0, missing))
    return fbank[..., :target_length, :]


def normalize(fbank: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(x - mean) / (2 * std)``: the official normalisation (note the 2)."""
    return (fbank - mean) / (std * 2)


def features(waveform: torch.Tensor | np.ndarray, sample_rate: int, target_length: int | None = 1024,
             mean: float | None = AUDIOSET.mean, std: float | None = AUDIOSET.std, *,
             short: ShortPolicy = "pad", resample_variant: KernelVariant = "functional") -> torch.Tensor:
    """Model input ``(target_length, 128)`` for one mono clip ``(samples,)`` / ``(1, samples)`` at any rate.

    This is the official evaluation path (no augmentation). ``mean=std=None`` skips normalisation;
    ``target_length=None`` keeps every frame (no padding or cutting).
    """
    x = one_clip(as_float_tensor(waveform), "features")
    return features_batch(x[None], sample_rate, target_length, mean, std, short=short,
                          resample_variant=resample_variant)[0]


def features_batch(waveforms: torch.Tensor | np.ndarray, sample_rate: int, target_length: int | None = 1024,
                   mean: float | None = AUDIOSET.mean, std: float | None = AUDIOSET.std, *,
                   short: ShortPolicy = "pad",
                   resample_variant: KernelVariant = "functional") -> torch.Tensor:
    """:func:`features` for a batch of equally long mono clips ``(batch, samples)`` -> ``(batch, T, 128)``; runs
    on the input's device (e.g. GPU for a whole batch at once)."""
    x = as_float_tensor(waveforms)
    if sample_rate != SAMPLE_RATE:
        x = resample(x, sample_rate, SAMPLE_RATE, variant=resample_variant)
    out = fbank_batch(x, SAMPLE_RATE, short=short)
    out = out if target_length is None else fit_length(out, target_length)
    return out if mean is None or std is None else normalize(out, mean, std)


def features_from_config(waveform: torch.Tensor | np.ndarray, sample_rate: int,
                         config: FeatureConfig) -> torch.Tensor:
    """:func:`features` with every setting taken from ``config``."""
    return features(waveform, sample_rate, config.target_length,
                    config.mean if config.normalize else None, config.std if config.normalize else None,
                    short=config.short, resample_variant=config.resample_variant)
