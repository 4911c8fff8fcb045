"""The SSAST baseline encoder: a DeiT-style ViT over spectrogram patches (timm 0.4.5 parameter names).

Attention is selectable: ``sdpa`` (fused ``scaled_dot_product_attention``) or ``naive`` (materialised
softmax(QK^T)V, as the original code ran); efficiency comparisons need both.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ssamba.models.config import EncoderConfig
from ssamba.models.encoder import PatchEncoder
from ssamba.models.layers import DropPath, linspace, make_norm


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, mode: str = "sdpa") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.mode = num_heads, mode
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.mode == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, config: EncoderConfig, drop_path: float) -> None:
        super().__init__()
        d = config.embed_dim
        self.norm1 = make_norm(config.norm, d, config.norm_eps)
        self.attn = Attention(d, config.num_heads, config.attention)
        self.drop_path = DropPath(drop_path)
        self.norm2 = make_norm(config.norm, d, config.norm_eps)
        self.mlp = Mlp(d, int(d * config.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SSASTEncoder(PatchEncoder):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        rates = linspace(0.0, config.drop_path_rate, config.depth)
        self.blocks = nn.ModuleList(ViTBlock(config, r) for r in rates)
        self.norm = make_norm(config.norm, config.embed_dim, config.norm_eps)
        for module in self.blocks.modules():  # timm ViT init: trunc_normal(.02) weights, zero biases
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def set_attention(self, mode: str) -> None:
        """Switch every block between ``sdpa`` and ``naive`` attention (same weights, same maths)."""
        if mode not in ("sdpa", "naive"):
            raise ValueError(f"attention must be 'sdpa' or 'naive', got {mode!r}")
        self.config.attention = mode
        for block in self.blocks:
            block.attn.mode = mode

    def trunk(self, tokens: Tensor, collect: list[Tensor] | None = None) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
            if collect is not None:
                collect.append(tokens)
        return self.norm(tokens)
