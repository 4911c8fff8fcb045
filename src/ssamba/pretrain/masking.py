"""Which patches to mask (spec §7): clusters of neighbouring patches, or random frames.

Generating the id sets is a small per-sample Python loop, like the official generator; everything applied to
tensors downstream is vectorised over the batch.  Randomness comes from a ``random.Random`` that, unless given,
is seeded from torch's RNG, so ``torch.manual_seed`` makes masks reproducible.
"""
from __future__ import annotations

import random

import torch
from torch import Tensor


def cluster_mask_ids(num_patches: int, mask_size: int, t_dim: int, rng: random.Random,
                     cluster_sides: tuple[int, ...] = (3, 4, 5)) -> list[int]:
    """The official ``gen_maskid_patch``: the same distribution, quirks included (Q7).

    A cluster side ``c`` is drawn once per sample; random anchors add ``c x c`` blocks (rows step by ``t_dim``,
    clusters wrap into the next frequency row, id 0 is never masked) until more than ``mask_size`` unique ids are
    collected; the ``mask_size`` smallest are kept, as CPython's ``list(set(ids))[:M]`` does in the official code.
    """
    if not 0 < mask_size <= num_patches - 2:
        raise ValueError(f"cluster masking needs 0 < mask_size <= num_patches - 2 = {num_patches - 2}, "
                         f"got {mask_size} (pass a smaller mask_size=, or a longer input)")
    side = cluster_sides[rng.randrange(len(cluster_sides))]
    ids: set[int] = set()
    while len(ids) <= mask_size:
        start = rng.randrange(num_patches)
        ids.update(i for i in (start + t_dim * r + c for r in range(side) for c in range(side))
                   if 0 < i < num_patches)
    return sorted(ids)[:mask_size]


def frame_mask_ids(num_patches: int, mask_size: int, rng: random.Random) -> list[int]:
    """The official ``gen_maskid_frame``: ``mask_size`` distinct random ids (used when a patch spans all mels)."""
    if not 0 < mask_size <= num_patches:
        raise ValueError(f"frame masking needs 0 < mask_size <= num_patches = {num_patches}, got {mask_size}")
    return rng.sample(range(num_patches), mask_size)


def sample_mask(batch: int, grid: tuple[int, int], mask_size: int, kind: str = "cluster",
                rng: random.Random | None = None, device: torch.device | str | None = None) -> Tensor:
    """Mask ids ``(batch, mask_size)`` (int64, frequency-major patch ids) drawn independently per sample."""
    f_dim, t_dim = grid
    num_patches = f_dim * t_dim
    if rng is None:
        rng = random.Random(int(torch.randint(0, 2**62, (1,)).item()))
    if kind == "cluster":
        rows = [cluster_mask_ids(num_patches, mask_size, t_dim, rng) for _ in range(batch)]
    elif kind == "frame":
        rows = [frame_mask_ids(num_patches, mask_size, rng) for _ in range(batch)]
    else:
        raise ValueError(f"mask kind must be 'cluster' or 'frame', got {kind!r}")
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(batch, mask_size)
