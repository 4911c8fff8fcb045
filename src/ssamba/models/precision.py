"""Reduced-precision inference: matmul weights stored in the autocast dtype.

Under ``torch.autocast`` every ``nn.Linear`` weight is cast to the autocast dtype on every forward pass (autocast
caches a cast only within one ``with`` block).  For SSAMBA-tiny at 512 tokens on a CPU that is ~25 MB of float32
weights read and ~12 MB written per clip: ~10% of a bfloat16 forward pass on 1 thread and ~11% on 2 threads (the
benchmark in ``benchmarks/scan.py`` times both ways).  Storing the weights in that dtype once makes autocast's cast
a no-op and gives the same numbers bit for bit: autocast would round the same float32 weights the same way.

Only the weights of ``nn.Linear`` layers change dtype; their biases, norms, the scan's ``A_log``, ``D``, ``dt_proj``
bias (which the scan adds in float32) and the convolutions stay float32.  The model is then for inference under
``torch.autocast(..., dtype=dtype)`` only: without autocast a float32 input meets a bfloat16 weight and torch raises
a dtype mismatch; training would update bfloat16 master weights.
"""
from __future__ import annotations

import torch
from torch import nn


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store every ``nn.Linear`` weight of ``model`` in ``dtype`` (in place; returns ``model``).

    ``cast_matmul_weights(model, torch.float32)`` turns them back to float32 (with the rounding to ``dtype`` kept).
    """
    if not dtype.is_floating_point:
        raise ValueError(f"cast_matmul_weights needs a floating-point dtype, got {dtype}")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = module.weight.data.to(dtype)
    return model

