"""Turning user input (numpy or torch, any numeric dtype) into a float tensor, once, in one place."""
from __future__ import annotations

import numpy as np
import torch

_INT_SCALE = {torch.int16: 32768.0, torch.int32: 2147483648.0, torch.int8: 128.0}


def as_float_tensor(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``waveform`` as a float32/float64 tensor on its device.

    Integer PCM is scaled to [-1, 1] like a loaded file (int16 / 32768), because feeding int16-scale samples would
    shift every log-mel bin by 2*ln(32768). Half precision is promoted to float32: the fbank needs its range.
    """
    if isinstance(waveform, np.ndarray) and not waveform.dtype.isnative:  # e.g. big-endian samples from a file
        waveform = waveform.astype(waveform.dtype.newbyteorder("="))
    tensor = torch.from_numpy(np.ascontiguousarray(waveform)) if isinstance(waveform, np.ndarray) else waveform
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(waveform).__name__}")
    if tensor.dtype in _INT_SCALE:
        return tensor.to(torch.float32) / _INT_SCALE[tensor.dtype]
    if tensor.dtype == torch.uint8:  # 8-bit WAV convention: unsigned, centred on 128
        return (tensor.to(torch.float32) - 128.0) / 128.0
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    if tensor.is_floating_point():
        return tensor.to(torch.float32)
    raise TypeError(f"unsupported waveform dtype {tensor.dtype}")
