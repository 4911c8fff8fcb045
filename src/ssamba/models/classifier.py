"""A fine-tuning model: encoder + pooling + the official ``mlp_head`` (spec §6)."""
from __future__ import annotations

from torch import Tensor

from ssamba.models.base import AudioModel
from ssamba.models.config import ModelConfig
from ssamba.models.heads import classification_head, pool_cls, pool_mean, pool_per_second


class AudioClassifier(AudioModel):
    task = "classify"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.head = classification_head(config.encoder.embed_dim, config.label_dim)

    def pool(self, tokens: Tensor, pooling: str | None = None) -> Tensor:
        pooling = pooling or self.config.pooling
        if pooling == "mean":
            return pool_mean(tokens, self.num_cls_tokens)
        if pooling == "cls":
            return pool_cls(tokens, self.num_cls_tokens)
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")

    def forward(self, x: Tensor, pooling: str | None = None) -> Tensor:
        """(B, frames, mel) -> logits (B, label_dim). ``pooling`` overrides the config ("mean" or "cls")."""
        return self.head(self.pool(self.encode(x), pooling))

    def per_second(self, x: Tensor, segment_frames: int = 100, num_segments: int | None = None) -> Tensor:
        """Time-aligned per-segment logits (B, S, label_dim); see ``pool_per_second``."""
        enc = self.config.encoder
        pooled = pool_per_second(self.encode(x), self.num_cls_tokens, self.encoder.grid, enc.tshape, enc.tstride,
                                 segment_frames, num_segments)
        return self.head(pooled)
