"""A fine-tuning model: encoder + pooling + the official ``mlp_head`` (spec §6)."""
from __future__ import annotations

from torch import Tensor

from ssamba.models.base import AudioModel
from ssamba.models.config import ModelConfig
from ssamba.models.heads import classification_head, pool_cls, pool_mean, pool_official_1sec, pool_per_second

#: poolings that give one vector per time segment, hence logits (B, S, label_dim)
SEGMENT_POOLINGS = ("per_second", "official_1sec")


class AudioClassifier(AudioModel):
    task = "classify"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.head = classification_head(config.encoder.embed_dim, config.label_dim)

    def pool(self, tokens: Tensor, pooling: str | None = None, num_segments: int | None = None) -> Tensor:
        """(B, D) for "mean"/"cls"; (B, S, D) for "per_second" (time-aligned) and "official_1sec" (quirk Q11)."""
        pooling = pooling or self.config.pooling
        if pooling == "mean":
            return pool_mean(tokens, self.num_cls_tokens)
        if pooling == "cls":
            return pool_cls(tokens, self.num_cls_tokens)
        if pooling == "per_second":
            enc = self.config.encoder
            return pool_per_second(tokens, self.num_cls_tokens, self.encoder.grid, enc.tshape, enc.tstride,
                                   num_segments=num_segments)
        if pooling == "official_1sec":
            return pool_official_1sec(tokens, 60 if num_segments is None else num_segments)
        raise ValueError(f"pooling must be 'mean', 'cls', {' or '.join(map(repr, SEGMENT_POOLINGS))}, got {pooling!r}")

    def forward(self, x: Tensor, pooling: str | None = None, num_segments: int | None = None) -> Tensor:
        """(B, frames, mel) -> logits (B, label_dim), or (B, S, label_dim) under a per-segment pooling.

        ``pooling`` overrides the config's; going through ``forward`` (not a separate method) keeps per-second
        fine-tuning working under DistributedDataParallel.
        """
        return self.head(self.pool(self.encode(x), pooling, num_segments))

    def per_second(self, x: Tensor, segment_frames: int = 100, num_segments: int | None = None) -> Tensor:
        """Time-aligned per-segment logits (B, S, label_dim); see ``pool_per_second``."""
        enc = self.config.encoder
        pooled = pool_per_second(self.encode(x), self.num_cls_tokens, self.encoder.grid, enc.tshape, enc.tstride,
                                 segment_frames, num_segments)
        return self.head(pooled)
