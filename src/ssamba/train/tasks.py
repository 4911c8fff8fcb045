"""What a training step computes and how a model is evaluated, for fine-tuning and for pretraining."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ssamba.pretrain.masking import sample_mask
from ssamba.train.distributed import DistEnv, gather_objects
from ssamba.train.metrics import classification_stats
from ssamba.train.sampler import unshuffled_positions

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def as_targets(target: Tensor, num_classes: int) -> Tensor:
    """Class ids (B,) become one-hot rows; multi-hot or soft (mixup) rows (B, C) pass through as float."""
    if target.dim() == 1:
        return F.one_hot(target.long(), num_classes).float()
    return target.float()


@dataclass
class ClassificationTask:
    """Fine-tuning: CE on argmax(labels) or BCE on (soft) labels, as the official recipes (spec §10)."""

    loss: Literal["ce", "bce"] = "ce"
    metric: Literal["acc", "mAP"] = "acc"

    @property
    def main_metric(self) -> str:
        return self.metric

    def compute_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.loss == "ce":
            return F.cross_entropy(logits, targets.argmax(dim=1))
        return F.binary_cross_entropy_with_logits(logits, targets)

    def train_step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        x, target = batch[0], batch[1]
        logits = model(x).float()
        targets = as_targets(target, logits.shape[1])
        acc = (logits.argmax(1) == targets.argmax(1)).float().mean()
        return {"loss": self.compute_loss(logits, targets), "acc": acc}

    def evaluate(self, model: nn.Module, loader: DataLoader, env: DistEnv) -> dict[str, float]:
        parts = [p for p in gather_objects(predict(model, loader), env) if p is not None]  # a rank may hold no item
        scores = np.concatenate([p[0] for p in parts])
        targets = np.concatenate([p[1] for p in parts])
        logits, labels = torch.from_numpy(scores), torch.from_numpy(targets)
        stats = classification_stats(scores, targets).as_dict()
        return {"loss": self.compute_loss(logits, labels).item(), **stats}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray] | None:
    """Logits and float targets of every batch, on this process; None when it holds no item (an evaluation set
    smaller than the number of processes)."""
    all_logits, all_targets = [], []
    for x, target, *_ in loader:
        device = next(model.parameters()).device
        logits = model(x.to(device)).float().cpu()
        all_logits.append(logits.numpy())
        all_targets.append(as_targets(target, logits.shape[1]).numpy())
    if not all_logits:
        return None
    return np.concatenate(all_logits), np.concatenate(all_targets)


@dataclass
class PretrainTask:
    """Joint masked-patch objective; validation on fixed-seed masks (the official validation uses 400 patches)."""

    mask_size: int = 400
    eval_mask_size: int = 400
    single_pass: bool = False
    main_metric: str = "acc"
    _capped: set[int] = field(default_factory=set, init=False, repr=False, compare=False)  # mask sizes warned of

    def train_step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return model(x, mask_size=self._fit(model, self.mask_size), single_pass=self.single_pass)

    def evaluate(self, model: nn.Module, loader: DataLoader, env: DistEnv) -> dict[str, float]:
        """The validation losses on masks drawn per clip from (the fixed seed, the clip's index, the objective), so
        that they do not depend on the number of processes or on the evaluation batch size."""
        totals, count = {}, 0
        base = int(torch.randint(0, 2**62, ()))  # the same on every rank: evaluate() seeded them alike
        size, core = self._fit(model, self.eval_mask_size), _unwrap(model)
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            x = x.to(next(model.parameters()).device)
            clips = unshuffled_positions(env.rank, env.world_size, count, len(x))
            masks = tuple(torch.cat([sample_mask(1, core.encoder.grid, size, core.mask_kind,
                                                 rng=random.Random(f"{base}:{clip}:{objective}"), device=x.device)
                                     for clip in clips]) for objective in ("mpc", "mpg"))
            out = model.pretraining_loss(x, masks, mask_size=size)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + v.item() * len(x)
            count += len(x)
        parts = [p for p in gather_objects((totals, count), env) if p[1]]  # a rank may hold no item
        n = sum(p[1] for p in parts)
        return {k: sum(p[0][k] for p in parts) / n for k in parts[0][0]}

    def _fit(self, model: nn.Module, mask_size: int) -> int:
        """Cap the mask size to what the patch grid allows (small demo inputs have fewer than 400 patches); said
        once per task and size."""
        grid = _unwrap(model).encoder.grid
        limit = grid[0] * grid[1] - 2
        if mask_size > limit:
            if mask_size not in self._capped:
                logger.warning("mask size %d exceeds what a %dx%d patch grid allows; masking %d patches instead",
                               mask_size, grid[0], grid[1], limit)
                self._capped.add(mask_size)
            return limit
        return mask_size
