"""Heads and pooling over encoder tokens ``(B, num_cls + F'*T', D)`` (spec §6)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def classification_head(dim: int, label_dim: int) -> nn.Sequential:
    """The official ``mlp_head``: LayerNorm then Linear."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, label_dim))


def prediction_head(dim: int, out_dim: int = 256) -> nn.Sequential:
    """Masked-patch prediction head (``cpredlayer``/``gpredlayer``): Linear -> ReLU -> Linear to patch space."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out_dim))


def pool_mean(tokens: Tensor, num_cls_tokens: int) -> Tensor:
    """``ft_avgtok``: mean of the patch tokens, cls token(s) excluded."""
    return tokens[:, num_cls_tokens:].mean(dim=1)


def pool_cls(tokens: Tensor, num_cls_tokens: int) -> Tensor:
    """``ft_cls``: the cls token; SSAST models with two (cls + distillation) average them."""
    return tokens[:, :num_cls_tokens].mean(dim=1)


def pool_per_second(
    tokens: Tensor, num_cls_tokens: int, grid: tuple[int, int], tshape: int, tstride: int,
    segment_frames: int = 100, num_segments: int | None = None,
) -> Tensor:
    """Time-aligned pooling: ``(B, S, D)``, one mean per segment of ``segment_frames`` frames (1 s at 10 ms hops).

    Each time column of patches goes to the segment holding its centre frame and is averaged over all frequency
    rows.  ``num_segments`` defaults to the segments that hold any patch centre; columns centred past the last
    segment are left out (with 60 segments of a 6144-frame input they cover only the zero padding past 60 s, and
    folded into second 59 they were 60% of its mean), and a segment that holds no centre (a stride wider than a
    segment, or a last segment shorter than a column) takes the mean of its nearest column.  The official ``ft_avgtok_1sec`` (quirk Q11, see ``pool_official_1sec``)
    instead averages runs of consecutive frequency-major tokens, which are not time segments.
    """
    f_dim, t_dim = grid
    batch, _, dim = tokens.shape
    columns = tokens[:, num_cls_tokens:].reshape(batch, f_dim, t_dim, dim).mean(dim=1)  # (B, T', D)
    centres = torch.arange(t_dim, device=tokens.device) * tstride + tshape / 2
    segment = torch.div(centres, segment_frames, rounding_mode="floor").long()
    if num_segments is None:
        num_segments = int(segment.max().item()) + 1
    inside = segment < num_segments
    segment, inside_columns = segment[inside], columns[:, inside]
    sums = columns.new_zeros(batch, num_segments, dim).index_add_(1, segment, inside_columns)
    counts = torch.bincount(segment, minlength=num_segments).to(columns.dtype)
    empty = counts == 0
    if empty.any():  # nearest column for segments without a centre
        seg_centres = (torch.arange(num_segments, device=tokens.device) + 0.5) * segment_frames
        nearest = (seg_centres[:, None] - centres[None, :]).abs().argmin(dim=1)
        sums[:, empty] = columns[:, nearest[empty]]
        counts[empty] = 1
    return sums / counts[None, :, None]


def pool_official_1sec(tokens: Tensor, num_segments: int = 60) -> Tensor:
    """The official ``ft_avgtok_1sec`` (quirk Q11), kept to reproduce it: consecutive runs of
    ``len(tokens) // num_segments`` tokens of the frequency-major sequence, cls included, tail dropped."""
    per = tokens.shape[1] // num_segments
    if per == 0:
        raise ValueError(f"{tokens.shape[1]} tokens cannot be split into {num_segments} segments")
    return tokens[:, : per * num_segments].reshape(tokens.shape[0], num_segments, per, -1).mean(dim=2)

