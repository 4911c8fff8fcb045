"""Band-limited (windowed-sinc) resampling, numerically the reference resampler of SSAST/SSAMBA.

The kernel is a Hann-windowed sinc with 6 zero crossings and its cut-off at 0.99 of the lower Nyquist rate. Each of
the ``new'`` output phases (rates reduced by their gcd) is one output channel of a strided ``conv1d``; the phases are
interleaved and the result is cut to the reference length. Another resampler moves the top mel bins by several nats,
so the released checkpoints only see in-distribution input through this one. Batched over any leading dimensions;
runs on whatever device the input lives on.

That kernel has ``new' x (2*width + orig')`` taps, nearly all zero: for rates whose gcd is small (a file at
16001 Hz: 16000 phases of 16015 taps, 1 GB) it does not fit in memory. Past :data:`MAX_POLYPHASE_TAPS` the same
windowed sinc is evaluated at each output sample's own ``2*width + 2`` input neighbours instead (float64 positions
and weights, output in chunks): it equals the float64 polyphase result to float32 rounding (at such rates the float32
polyphase kernel itself is off by up to 3e-4), with memory linear in the audio.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ssamba.audio._tensor import as_float_tensor

#: ``"functional"``: the kernel of ``torchaudio.functional.resample``, computed in the waveform's dtype;
#: ``"transform"``: the cached kernel of ``torchaudio.transforms.Resample`` (used by SSAMBA's preparation scripts),
#: computed in float64 from float32 phase offsets and cast. They differ by at most ~1.4e-5.
KernelVariant = Literal["functional", "transform"]

#: largest polyphase kernel built (taps); the common rates need far fewer (44.1 -> 16 kHz: 76,000)
MAX_POLYPHASE_TAPS = 1 << 22
#: outputs per chunk of the direct evaluation (its weights: chunk x (2*width + 2) float64)
_DIRECT_CHUNK = 1 << 16


def reduced_rates(orig_sr: int, new_sr: int) -> tuple[int, int]:
    """Both rates divided by their gcd: the kernel has ``new'`` phases and the conv stride is ``orig'``."""
    g = math.gcd(int(orig_sr), int(new_sr))
    return int(orig_sr) // g, int(new_sr) // g


def kernel_width(orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> int:
    """Half-length of the kernel in input samples: enough to cover ``lowpass_filter_width`` zero crossings."""
    orig, new = reduced_rates(orig_sr, new_sr)
    return math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff))


@lru_cache(maxsize=32)
def _kernel_cpu(orig: int, new: int, lowpass_filter_width: int, rolloff: float, dtype: torch.dtype,
                variant: KernelVariant) -> torch.Tensor:
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    # "transform" builds the tap grid in float64 but the per-phase offsets in float32 (an integer arange divided
    # by new'), so both dtypes are kept apart to reproduce its rounding
    tap_dtype, phase_dtype = (dtype, dtype) if variant == "functional" else (torch.float64, torch.float32)
    # time of every kernel tap, in input samples, relative to each output phase (same op order as the reference)
    idx = torch.arange(-width, width + orig, dtype=tap_dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=phase_dtype)[:, None, None] / new + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2  # Hann
    t *= math.pi
    scale = base_freq / orig
    kernels = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), torch.sin(t) / t)
    kernels *= window * scale
    return kernels


def sinc_kernel(orig_sr: int, new_sr: int, *, lowpass_filter_width: int = 6, rolloff: float = 0.99,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                variant: KernelVariant = "functional") -> tuple[torch.Tensor, int]:
    """The ``(new', 1, 2*width + orig')`` kernel in ``dtype`` on ``device``, and ``width``."""
    if variant not in ("functional", "transform"):
        raise ValueError(f"kernel variant must be 'functional' or 'transform', got {variant!r}")
    orig, new = reduced_rates(orig_sr, new_sr)
    kernel = _kernel_cpu(orig, new, int(lowpass_filter_width), float(rolloff), dtype, variant)
    width = kernel_width(orig_sr, new_sr, lowpass_filter_width, rolloff)
    return kernel.to(device=device, dtype=dtype, copy=True), width  # never hand out the cached tensor


def resampled_length(length: int, orig_sr: int, new_sr: int) -> int:
    """Output length of :func:`resample` for ``length`` input samples.

    The reference rounds ``new'*length/orig'`` to float32 before ``ceil``, which is one sample short of the exact
    ceiling for some long inputs at 11.025/22.05/44.1 kHz; we reproduce that because a sample can change the frame
    count.
    """
    orig, new = reduced_rates(orig_sr, new_sr)
    if orig == new:
        return int(length)
    return int(math.ceil(float(np.float32(new * length / orig))))


def resample(waveform: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int, *, lowpass_filter_width: int = 6,
             rolloff: float = 0.99, variant: KernelVariant = "functional") -> torch.Tensor:
    """Resample ``(..., samples)`` from ``orig_sr`` to ``new_sr`` (identity when the rates are equal).

    Leading dimensions are independent signals (channels or a batch). Output dtype and device follow the input.
    ``variant`` picks which reference kernel to reproduce (see :data:`KernelVariant`).
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    x = as_float_tensor(waveform)
    orig, new = reduced_rates(orig_sr, new_sr)
    if orig == new:
        return x
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    width = kernel_width(orig_sr, new_sr, lowpass_filter_width, rolloff)
    if new * (2 * width + orig) > MAX_POLYPHASE_TAPS:
        out = _resample_direct(flat, orig, new, width, lowpass_filter_width, rolloff,
                               resampled_length(shape[-1], orig_sr, new_sr))
        return out.reshape(*shape[:-1], out.shape[-1])
    kernel, width = sinc_kernel(orig_sr, new_sr, lowpass_filter_width=lowpass_filter_width, rolloff=rolloff,
                                dtype=x.dtype, device=x.device, variant=variant)
    padded = F.pad(flat, (width, width + orig))
    phases = F.conv1d(padded[:, None], kernel, stride=orig)  # (signals, new', steps)
    out = phases.transpose(1, 2).reshape(flat.shape[0], -1)[..., :resampled_length(shape[-1], orig_sr, new_sr)]
    return out.reshape(*shape[:-1], out.shape[-1])


def _resample_direct(flat: torch.Tensor, orig: int, new: int, width: int, lowpass_filter_width: int,
                     rolloff: float, length: int) -> torch.Tensor:
    """The polyphase resampler's result for ``(signals, samples)`` computed per output sample: output ``j`` sits
    at input position ``j * orig / new`` and takes the kernel at its ``2*width + 2`` nearest inputs (zero outside
    the signal), the kernel being the same Hann-windowed sinc as :func:`_kernel_cpu`'s."""
    base_freq = min(orig, new) * rolloff
    taps = torch.arange(-width, width + 2, device=flat.device)  # offsets from floor(position)
    padded = F.pad(flat, (width, width + 2))
    out = flat.new_empty(flat.shape[0], length)
    for first in range(0, length, _DIRECT_CHUNK):
        j = torch.arange(first, min(first + _DIRECT_CHUNK, length), device=flat.device, dtype=torch.int64)
        start = torch.div(j * orig, new, rounding_mode="floor")  # input sample at or before output j
        index = start[:, None] + taps  # input samples read by output j
        # (index - j*orig/new) / orig in exact integer arithmetic, then scaled as the kernel's time axis
        t = (index * new - j[:, None] * orig).to(torch.float64) / (new * orig) * base_freq
        t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        t *= math.pi
        weights = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base_freq / orig)
        gathered = padded[:, index + width]  # (signals, chunk, taps)
        out[:, first:first + j.numel()] = (gathered.to(torch.float64) * weights).sum(-1).to(flat.dtype)
    return out
