"""A resumable, distributed epoch sampler.

Each epoch is a permutation drawn from ``seed + epoch`` (so any process can recompute it), padded to a multiple of
the world size and dealt out ``rank::world_size`` like ``DistributedSampler``; ``start`` skips the samples this rank
already consumed, which is how a resumed run continues mid-epoch on exactly the same data.  With ``weights`` an
epoch is instead ``size`` draws with replacement in proportion to them (``WeightedRandomSampler``, e.g. SUPERB's
class-balanced keyword spotting), from the same seed.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True, weights: Sequence[float] | None = None) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if weights is not None and (len(weights) != size or min(weights) < 0 or not sum(weights) > 0):
            raise ValueError(f"weights: {size} non-negative values with a positive sum needed")
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.weights is not None:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=g).tolist()
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1 and self.size % self.world_size:
            order += order[: self.world_size - self.size % self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return len(self.indices()) - self.start


def unshuffled_positions(rank: int, world_size: int, start: int, count: int) -> list[int]:
    """Dataset indices of items ``start .. start + count - 1`` of ``rank`` under an unpadded, unshuffled
    :class:`ResumableSampler` (evaluation: rank r takes r, r + world_size, ...)."""
    return [rank + world_size * k for k in range(start, start + count)]
