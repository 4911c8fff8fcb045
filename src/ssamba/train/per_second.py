"""Per-second classification: one label per second of a long input (SSAMBA's Urban8K 60-s task, spec §10).

The model's per-segment pooling gives logits ``(B, S, C)``; targets are ``(B, S)`` class indices with
``ignore_index`` on unlabelled seconds (:mod:`ssamba.data.sequences`). The loss is cross-entropy averaged over the
labelled seconds of the batch, and evaluation flattens every labelled second of the set into one sample so that
accuracy (and mAP/AUC) are computed exactly as for clip-level tasks (:func:`classification_stats`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ssamba.train.distributed import DistEnv, gather_objects
from ssamba.train.engine import TrainingError
from ssamba.train.metrics import classification_stats

#: model pooling for each ``finetune.pooling`` of the per-second task
_POOLINGS = {"time": "per_second", "official_1sec": "official_1sec"}


@dataclass
class PerSecondTask:
    """CE over the labelled seconds; ``pooling``: "time" (time-aligned, ours) or "official_1sec" (quirk Q11)."""

    num_segments: int = 60
    pooling: Literal["time", "official_1sec"] = "time"
    metric: Literal["acc", "mAP"] = "acc"
    ignore_index: int = -100

    def __post_init__(self) -> None:
        if self.pooling not in _POOLINGS:
            raise ValueError(f"per-second pooling must be one of {sorted(_POOLINGS)}, got {self.pooling!r}")

    @property
    def main_metric(self) -> str:
        return self.metric

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """(B, S, C) float32 logits; S must equal the number of labelled segments."""
        logits = model(x, pooling=_POOLINGS[self.pooling], num_segments=self.num_segments).float()
        if logits.dim() != 3 or logits.shape[1] != self.num_segments:
            raise TrainingError(f"the model gave logits of shape {tuple(logits.shape)}, expected "
                                f"(batch, {self.num_segments}, classes)")
        return logits

    def compute_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean CE over labelled seconds; exactly 0 (with a graph) when a batch has none, never NaN."""
        flat, target = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long()
        total = F.cross_entropy(flat, target, ignore_index=self.ignore_index, reduction="sum")
        return total / (target != self.ignore_index).sum().clamp_min(1)

    def train_step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        x, labels = batch[0], batch[1]
        logits = self.logits(model, x)
        mask = labels != self.ignore_index
        correct = ((logits.argmax(-1) == labels) & mask).sum()
        acc = correct.float() / mask.sum().clamp_min(1)
        return {"loss": self.compute_loss(logits, labels), "acc": acc}

    def evaluate(self, model: nn.Module, loader: DataLoader, env: DistEnv) -> dict[str, float]:
        scores, labels = self.predict(model, loader)
        parts = [p for p in gather_objects((scores, labels), env) if len(p[1])]  # a rank may have seen none
        if not parts:
            raise TrainingError("the evaluation set has no labelled second (every second is silence, padding or "
                                "unreadable)")
        scores = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        loss = F.cross_entropy(torch.from_numpy(scores), torch.from_numpy(labels)).item()
        return {"loss": loss, **classification_stats(scores, labels).as_dict()}

    @torch.no_grad()
    def predict(self, model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N, C) and class ids (N,) of every labelled second seen by this process."""
        device = next(model.parameters()).device
        all_scores, all_labels = [], []
        for x, labels, *_ in loader:
            logits = self.logits(model, x.to(device)).cpu()
            mask = labels != self.ignore_index
            all_scores.append(logits[mask].numpy())
            all_labels.append(labels[mask].numpy())
        if not all_scores:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return np.concatenate(all_scores), np.concatenate(all_labels)
