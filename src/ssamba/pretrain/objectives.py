"""Pretraining objectives (spec §7), batched: discriminative InfoNCE, generative MSE, and their sum."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: weight of the generative loss in the joint objective, as the official ``pretrain_joint``
MSE_WEIGHT = 10.0


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b]]`` for every b: (B, N, P) and (B, M) -> (B, M, P)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def infonce(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """InfoNCE with in-clip negatives, and its accuracy. pred, target: (B, M, P).

    ``S[b, j, k] = <target_j, pred_k>``; the loss is the mean of ``-log_softmax(S, -1)`` on the diagonal (no
    temperature).  The accuracy follows the official code (quirk Q8): softmax over predictions per target row, then
    argmax over targets per prediction column.

    Computed in float32 whatever the autocast: the scores are dot products of 256 values of magnitude ~1 (bf16
    would move the loss in steps of 1/64 and its gradients by ~5%), and the official code runs in float32.
    """
    with torch.autocast(pred.device.type, enabled=False):
        scores = torch.bmm(target.float(), pred.float().transpose(1, 2))  # (B, M, M)
        nce = -torch.diagonal(F.log_softmax(scores, dim=-1), dim1=-2, dim2=-1).mean()
        with torch.no_grad():
            arange = torch.arange(scores.shape[-1], device=scores.device)
            acc = (scores.softmax(dim=-1).argmax(dim=-2) == arange).float().mean()
    return nce, acc


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all masked patches and patch values, in float32 (as :func:`infonce`)."""
    return F.mse_loss(pred.float(), target.float())


def joint_loss(nce: Tensor, mse: Tensor) -> Tensor:
    return nce + MSE_WEIGHT * mse
