"""Metrics against brute-force definitions, and the YAML config loader."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest

from ssamba.config import ConfigError, load_config
from ssamba.train.metrics import average_precision, classification_stats, d_prime, roc_auc


def brute_ap(scores, labels):
    """AP = mean over positives of precision at the rank of that positive (ties broken pessimistically)."""
    precisions = []
    for i in np.nonzero(labels)[0]:
        above = scores >= scores[i]
        precisions.append(labels[above].sum() / above.sum())
    return float(np.mean(precisions))


def brute_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


def test_ap_and_auc_against_definitions():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = rng.integers(5, 40)
        labels = (rng.random(n) < 0.3).astype(int)
        labels[0] = 1
        labels[1] = 0
        scores = np.round(rng.random(n), 1 if trial % 2 else 6)  # with and without ties
        assert average_precision(scores, labels) == pytest.approx(brute_ap(scores, labels))
        assert roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels))
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_classification_stats():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    targets = np.array([0, 1, 0, 2])
    stats = classification_stats(scores, targets)
    assert stats.acc == 0.75
    assert stats.mAP == pytest.approx(np.mean([1.0, 1.0, 1.0]))  # each class's positives rank first
    assert d_prime(0.5) == pytest.approx(0.0) and d_prime(0.9) == pytest.approx(1.8123876, rel=1e-6)


@dataclass
class Inner:
    lr: float = 1e-4
    kind: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None


def test_yaml_config_with_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  lr: 3e-4\n  sizes: [4, 5]\n")
    cfg = load_config(Outer, path, ["inner.kind=b", "limit=7", "inner.lr=5e-5"])
    assert cfg == Outer(name="run", inner=Inner(lr=5e-5, kind="b", sizes=[4, 5]), limit=7)
    assert load_config(Outer, path, ["limit=null"]).limit is None
    with pytest.raises(ConfigError, match="unknown key.*'lrr'"):
        load_config(Outer, path, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match="inner.kind.*'c'"):
        load_config(Outer, path, ["inner.kind=c"])
    with pytest.raises(ConfigError, match="limit"):
        load_config(Outer, path, ["limit=many"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(Outer, path, ["limit"])
