"""Spectrogram patches: patch embedding, patch targets, and position-embedding adaptation (spec §2, §8)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Conv2d patch projection of a (B, frames, mel) spectrogram to (B, F'*T', D) tokens in frequency-major order.

    Frequency is the image height and time the width (``x.unsqueeze(1).transpose(2, 3)``), so token ``f*T' + t``
    is the patch at frequency row ``f`` and time column ``t``.
    """

    def __init__(self, embed_dim: int, fshape: int = 16, tshape: int = 16, fstride: int = 16, tstride: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=(fshape, tshape), stride=(fstride, tstride))

    def forward(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(1).transpose(2, 3)  # (B, 1, mel, frames)
        return self.proj(x).flatten(2).transpose(1, 2)


def unfold_patches(x: Tensor, fshape: int, tshape: int, fstride: int, tstride: int) -> Tensor:
    """(B, frames, mel) -> (B, F'*T', fshape*tshape) raw patches in token order; inside a patch index kf*tshape+kt."""
    image = x.unsqueeze(1).transpose(2, 3)
    return F.unfold(image, kernel_size=(fshape, tshape), stride=(fstride, tstride)).transpose(1, 2)


def adapt_position_embedding(
    pos_embed: Tensor, num_cls_tokens: int, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> Tensor:
    """Centre-cut or bilinearly interpolate a learned position embedding to a new patch grid (spec §8 step 6).

    Time first, then frequency, as two separate ``interpolate`` calls exactly as the official code (the rounding of a
    single 2-D call differs).  The official code hard-codes the pretraining frequency size 8 in the time step (Q5)
    and uses ``t_dim`` as the length of the frequency cut (Q6); here the old frequency size and ``f_dim`` are used.
    Both give identical results for every configuration the official code can run (128 mel bins, 16x16 patches).
    The cls position(s) are kept.
    """
    (p_f, p_t), (f_dim, t_dim) = old_grid, new_grid
    cls_pos, patch_pos = pos_embed[:, :num_cls_tokens], pos_embed[:, num_cls_tokens:]
    dim = pos_embed.shape[-1]
    if patch_pos.shape[1] != p_f * p_t:
        raise ValueError(f"position embedding has {patch_pos.shape[1]} patch positions, grid {p_f}x{p_t} expected")
    grid = patch_pos.reshape(1, p_f * p_t, dim).transpose(1, 2).reshape(1, dim, p_f, p_t)
    if t_dim < p_t:
        start = p_t // 2 - t_dim // 2
        grid = grid[:, :, :, start:start + t_dim]
    else:
        grid = F.interpolate(grid, size=(p_f, t_dim), mode="bilinear")
    if f_dim < p_f:
        start = p_f // 2 - f_dim // 2
        grid = grid[:, :, start:start + f_dim, :]
    else:
        grid = F.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
    grid = grid.reshape(1, dim, f_dim * t_dim).transpose(1, 2)
    return torch.cat([cls_pos, grid], dim=1)
