"""Training-time augmentation of the official pipeline (spec §11), as small pure functions.

Each function takes an explicit ``torch.Generator`` and returns a new tensor, so a dataset can derive one generator
per (seed, epoch, index) and get the same augmentation whatever worker runs the item. Where they apply:

* :func:`mix_waveforms` (mixup, probability ``mixup``) on mean-removed waveforms, before the fbank;
* :func:`freq_mask` / :func:`time_mask` (SpecAugment) after padding, before normalisation, filling 0;
* :func:`add_noise_and_roll` after normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; all off by default (the evaluation path). Official values per dataset in spec §10,
    e.g. ESC-50 ``freqm=24, timem=96, noise=True``; AudioSet ``freqm=48, timem=192, mixup=0.5``."""

    freqm: int = 0  # max SpecAugment frequency-mask width (bins)
    timem: int = 0  # max SpecAugment time-mask width (frames)
    mixup: float = 0.0  # probability of mixing each clip with a random other one
    mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha)
    noise: bool = False  # uniform noise + random time roll

    def __post_init__(self) -> None:
        if self.freqm < 0 or self.timem < 0:
            raise ValueError(f"mask widths must be >= 0, got freqm={self.freqm}, timem={self.timem}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"mixup is a probability, got {self.mixup}")
        if self.mixup_alpha <= 0:
            raise ValueError(f"mixup_alpha must be positive, got {self.mixup_alpha}")


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def mask_along(fbank: torch.Tensor, dim: int, max_width: int, generator: torch.Generator | None = None,
               fill: float = 0.0) -> torch.Tensor:
    """One mask of width ``floor(U*max_width)`` starting at ``floor(U'*(size - width))`` along ``dim``.

    The same distribution as torchaudio's Frequency/TimeMasking with ``iid_masks=False`` (one mask shared by every
    leading index), which the official loader used.
    """
    if max_width < 1:
        return fbank
    size = fbank.shape[dim]
    width = _uniform(generator) * max_width
    start = int(_uniform(generator) * (size - width))
    stop = start + int(width)
    index = torch.arange(size, device=fbank.device)
    shape = [1] * fbank.ndim
    shape[dim] = size
    mask = ((index >= start) & (index < stop)).reshape(shape)
    return fbank.masked_fill(mask, fill)


def freq_mask(fbank: torch.Tensor, max_width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment frequency mask on ``(..., frames, bins)``."""
    return mask_along(fbank, -1, max_width, generator)


def time_mask(fbank: torch.Tensor, max_width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment time mask on ``(..., frames, bins)``."""
    return mask_along(fbank, -2, max_width, generator)


def add_noise_and_roll(fbank: torch.Tensor, generator: torch.Generator | None = None,
                       max_shift: int = 10) -> torch.Tensor:
    """``x + U(0,1)^{T x F} * U(0,1) / 10``, then roll along time by an integer in ``[-max_shift, max_shift - 1]``
    (numpy's exclusive ``randint`` bound, as the official loader)."""
    frames, bins = fbank.shape[-2:]
    noise = torch.rand((frames, bins), generator=generator, dtype=fbank.dtype).to(fbank.device)
    noisy = fbank + noise * _uniform(generator) / 10
    shift = int(torch.randint(-max_shift, max_shift, (), generator=generator))
    return torch.roll(noisy, shift, dims=-2)


def sample_mix_lambda(generator: torch.Generator | None = None, alpha: float = 10.0) -> float:
    """``lambda ~ Beta(alpha, alpha)``, drawn through a numpy generator seeded from ``generator`` (torch has no
    seedable Beta sampler)."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_waveforms(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """Official waveform mixup of two mono clips ``(..., samples)``.

    Both are mean-removed, ``second`` is cut or zero-padded to ``first``'s length, mixed as
    ``lam*first + (1-lam)*second``, and the mix is mean-removed again.
    """
    first = first - first.mean(dim=-1, keepdim=True)
    second = second - second.mean(dim=-1, keepdim=True)
    n = first.shape[-1]
    if second.shape[-1] < n:
        second = torch.nn.functional.pad(second, (0, n - second.shape[-1]))
    mixed = lam * first + (1 - lam) * second[..., :n]
    return mixed - mixed.mean(dim=-1, keepdim=True)


def mix_targets(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """Soft label ``lam*first + (1-lam)*second`` of two (multi-)hot targets."""
    return lam * first + (1 - lam) * second
