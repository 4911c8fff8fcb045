"""Evaluation metrics as SSAST reports them: accuracy, per-class average precision (mAP), ROC AUC and d-prime.

Written with numpy (no scikit-learn): AP is the step-wise area under the precision-recall curve, and AUC the
Mann-Whitney rank statistic with ties counted as one half, the definitions scikit-learn uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy: argmax of scores against argmax of (one-hot or soft) targets, or integer class targets."""
    truth = targets if targets.ndim == 1 else targets.argmax(axis=1)
    return float((scores.argmax(axis=1) == truth).mean())


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: sum over thresholds of (recall increase) x precision. NaN without positives."""
    labels = labels > 0.5
    positives = labels.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    # one point per distinct score (ties form one threshold)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp_at, seen_at = tp[last], last + 1
    precision, recall = tp_at / seen_at, tp_at / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting half."""
    labels = labels > 0.5
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.r_[0, np.nonzero(np.diff(sorted_values))[0] + 1]
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2  # average of 1-based ranks start+1..end
    return ranks


def d_prime(auc: float) -> float:
    """d' = sqrt(2) * Phi^-1(AUC), as in AST/SSAST."""
    from statistics import NormalDist

    if math.isnan(auc):
        return float("nan")
    if not 0.0 < auc < 1.0:
        return float("inf") if auc >= 1.0 else float("-inf")
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


@dataclass
class Stats:
    acc: float
    mAP: float
    mAUC: float
    d_prime: float

    def as_dict(self) -> dict[str, float]:
        return {"acc": self.acc, "mAP": self.mAP, "mAUC": self.mAUC, "d_prime": self.d_prime}


def classification_stats(scores: np.ndarray, targets: np.ndarray) -> Stats:
    """Accuracy, mean AP and mean AUC over the classes that have positives (and negatives), and d' of the mean AUC.

    ``scores`` (N, C) are probabilities or logits; ``targets`` (N, C) multi-hot/one-hot (or (N,) class ids).
    Any NaN or infinite score makes every metric NaN: such a model is broken, and ranks of NaNs would still give it
    a finite, order-dependent score (which could select it as the best).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        nan = float("nan")
        return Stats(acc=nan, mAP=nan, mAUC=nan, d_prime=nan)
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = np.eye(scores.shape[1])[targets.astype(int)]
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    aucs = [roc_auc(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    m_ap = float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else float("nan")
    m_auc = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")
    return Stats(acc=accuracy(scores, targets), mAP=m_ap, mAUC=m_auc,
                 d_prime=d_prime(m_auc) if not math.isnan(m_auc) else float("nan"))
