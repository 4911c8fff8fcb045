"""Metrics against brute-force definitions, and the YAML config loader."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest
import torch

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
    # text YAML would read as a date or a comment (silently null) stays text
    assert load_config(Outer, path, ["name=2024-01-01"]).name == "2024-01-01"
    assert load_config(Outer, path, ["name=#1"]).name == "#1"
    assert load_config(Outer, path, ["limit=~"]).limit is None and load_config(Outer, path, ["name="]).name == ""


def test_kfold_result_is_every_fold_at_the_best_pass_of_the_fold_averaged_curve():
    """SSAST's get_esc_result.py: one epoch for all folds, where their mean is best; each fold's own best epoch is
    chosen on the fold it scores (optimistic), and reported beside it, as is the last epoch."""
    from ssamba.train.engine import TrainingError
    from ssamba.train.run import kfold_summary

    curves = {"fold1": [0.5, 0.8, 0.7], "fold2": [0.6, 0.6, 0.9], "fold3": [0.7, 0.9, 0.8]}
    summary = kfold_summary("acc", curves)
    assert summary["pass"] == 3  # averages 0.6, 0.7667, 0.8
    assert summary["folds"] == {"fold1": 0.7, "fold2": 0.9, "fold3": 0.8}
    assert summary["mean"] == pytest.approx(0.8) and summary["std"] == pytest.approx(np.std([0.7, 0.9, 0.8]))
    assert summary["fold_best"]["folds"] == {"fold1": 0.8, "fold2": 0.9, "fold3": 0.9}
    assert summary["fold_best"]["mean"] == pytest.approx(2.6 / 3)  # the optimistic number, higher
    assert summary["final"]["mean"] == pytest.approx(0.8)
    # equal averages keep the earlier pass; unequal lengths compare the common passes
    assert kfold_summary("acc", {"a": [0.5, 0.5], "b": [0.5, 0.5, 1.0]})["pass"] == 1
    with pytest.raises(TrainingError, match="validation pass in every fold"):
        kfold_summary("acc", {"a": [], "b": [0.5]})
    # the official Urban8K scripts report every fold's last epoch: nothing chosen on the scored folds
    curves = {"fold1": [0.5, 0.8, 0.7], "fold2": [0.6, 0.9, 0.6]}
    last = kfold_summary("acc", curves, "last")
    assert (last["rule"], last["pass"], last["folds"]) == ("last", 3, {"fold1": 0.7, "fold2": 0.6})
    assert last["mean"] == pytest.approx(0.65) and last["best_average"]["pass"] == 2
    assert last["best_average"]["mean"] == pytest.approx(0.85)


def test_non_finite_scores_give_nan_metrics_and_never_the_best_model():
    """NaN/inf scores once gave finite, order-dependent AP/AUC/acc (an all-NaN model: acc 0.30, mAP 0.55) that
    could select it; a NaN first validation kept best/ on it for the whole run."""
    from ssamba.train.engine import improves

    targets = np.eye(3)[[0, 1, 2, 0, 1]]
    scores = np.random.default_rng(0).normal(size=(5, 3))
    assert math.isfinite(classification_stats(scores, targets).mAP)
    for bad in (np.nan, np.inf, -np.inf):
        broken = scores.copy()
        broken[2, 1] = bad
        assert all(math.isnan(v) for v in classification_stats(broken, targets).as_dict().values())
    assert math.isnan(d_prime(float("nan")))
    assert improves(0.5, None) and improves(0.5, float("nan")) and improves(0.6, 0.5)
    assert not improves(float("nan"), None) and not improves(float("nan"), 0.1) and not improves(0.5, 0.5)
    from ssamba.train.engine import first_best
    from ssamba.train.run import kfold_summary

    nan = float("nan")
    assert first_best([nan, 0.5, 0.9, 0.9]) == 2 and first_best([nan, nan]) == 0
    summary = kfold_summary("acc", {"a": [nan, 0.5], "b": [0.9, 0.6]})  # a NaN pass is never the selected one
    assert summary["pass"] == 2 and summary["fold_best"]["folds"] == {"a": 0.5, "b": 0.9}


def test_linear_probe_fit_depends_on_its_seed_only():
    """The probe head's initial weights once came from the global random state: the same seed gave another probe
    after any other random draw."""
    from ssamba.train.config import ProbeSection
    from ssamba.train.probe import fit_linear

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)), np.eye(3)[rng.integers(0, 3, 40)]
    cfg = ProbeSection(epochs=3, batch_size=8)
    first, _, _ = fit_linear(x, y, cfg, "ce", seed=5)
    torch.rand(100)  # some other draw from the global generator
    second, _, _ = fit_linear(x, y, cfg, "ce", seed=5)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert not torch.equal(fit_linear(x, y, cfg, "ce", seed=6)[0].weight, first.weight)
