"""Small building blocks shared by the encoders: DropPath and RMSNorm."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def linspace(start: float, stop: float, num: int) -> list[float]:
    """Evenly spaced floats (plain Python, so models can be built on the meta device)."""
    if num == 1:
        return [start]
    return [start + (stop - start) * i / (num - 1) for i in range(num)]


class DropPath(nn.Module):
    """Stochastic depth with timm semantics: a per-sample Bernoulli(keep) mask scaled by 1/keep, only in training."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = float(rate)

    @property
    def identity(self) -> bool:
        """Whether this module currently passes its input through unchanged."""
        return self.rate == 0.0 or not self.training

    def forward(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4g}"


class RMSNorm(nn.Module):
    """Root-mean-square norm as in mamba_ssm (no bias, no mean subtraction); used by some official s3prl models."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")
