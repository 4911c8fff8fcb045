"""The per-second task: loss and metrics against brute force, per-segment poolings, and a K-fold fine-tune through
the CLI on a tiny synthetic version of the UrbanSound8K 60-s recipe."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _audio_helpers import write_fold_manifests
from torch.utils.data import DataLoader, TensorDataset

from ssamba.cli import main
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset
from ssamba.models.heads import pool_official_1sec, pool_per_second
from ssamba.train.distributed import DistEnv
from ssamba.train.engine import TrainingError
from ssamba.train.per_second import PerSecondTask

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "urbansound8k_60s.yaml"
IGNORE = -100


def random_case(seed: int = 0, batch: int = 4, seconds: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seconds, classes, generator=g)
    labels = torch.randint(0, classes, (batch, seconds), generator=g)
    labels[torch.rand(batch, seconds, generator=g) < 0.3] = IGNORE
    labels[1] = IGNORE  # one sequence with no labelled second at all
    return logits, labels


def brute_force(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean CE and accuracy over labelled seconds, one second at a time."""
    losses, hits = [], []
    for b in range(labels.shape[0]):
        for s in range(labels.shape[1]):
            y = int(labels[b, s])
            if y == IGNORE:
                continue
            row = [float(v) for v in logits[b, s]]
            top = max(row)
            losses.append(-(row[y] - top - math.log(sum(math.exp(v - top) for v in row))))
            hits.append(row.index(top) == y)
    return sum(losses) / len(losses), sum(hits) / len(hits)


class FixedLogits(torch.nn.Module):
    """Returns the logits stored for each input (its first value is the sample's index), as a model would."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor, pooling: str | None = None, num_segments: int | None = None) -> torch.Tensor:
        self.calls.append({"pooling": pooling, "num_segments": num_segments})
        return self.logits[x[:, 0, 0].long()] + 0 * self.dummy


def test_loss_and_accuracy_equal_brute_force() -> None:
    logits, labels = random_case()
    task = PerSecondTask(num_segments=5)
    loss, acc = brute_force(logits, labels)
    assert task.compute_loss(logits, labels).item() == pytest.approx(loss, rel=1e-6)
    model = FixedLogits(logits)
    x = torch.arange(4, dtype=torch.float32)[:, None, None].expand(4, 8, 128)
    out = task.train_step(model, (x, labels))
    assert out["loss"].item() == pytest.approx(loss, rel=1e-6) and out["acc"].item() == pytest.approx(acc)
    assert model.calls[-1] == {"pooling": "per_second", "num_segments": 5}
    # a batch without any labelled second: zero loss with a graph (not NaN, which would stop the run)
    empty = task.train_step(model, (x[1:2], labels[1:2]))
    assert empty["loss"].item() == 0.0 and empty["acc"].item() == 0.0
    empty["loss"].backward()
    PerSecondTask(num_segments=5, pooling="official_1sec").train_step(model, (x, labels))
    assert model.calls[-1]["pooling"] == "official_1sec"


def test_evaluation_pools_every_labelled_second_of_the_set() -> None:
    logits, labels = random_case(seed=1, batch=7)
    x = torch.arange(7, dtype=torch.float32)[:, None, None].expand(7, 8, 128)
    loader = DataLoader(TensorDataset(x, labels), batch_size=3)
    metrics = PerSecondTask(num_segments=5).evaluate(FixedLogits(logits), loader, DistEnv())
    loss, acc = brute_force(logits, labels)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-6) and metrics["acc"] == pytest.approx(acc)
    assert set(metrics) == {"loss", "acc", "mAP", "mAUC", "d_prime"}
    with pytest.raises(TrainingError, match="no labelled second"):
        PerSecondTask(num_segments=5).evaluate(FixedLogits(logits), DataLoader(
            TensorDataset(x, torch.full_like(labels, IGNORE)), batch_size=3), DistEnv())


def test_classifier_per_segment_poolings_and_shape_check() -> None:
    torch.manual_seed(0)
    enc = preset("ssamba", "tiny", depth=2, input_tdim=400, fstride=16, tstride=16, drop_path_rate=0.0)
    model = AudioClassifier(ModelConfig(encoder=enc, task="classify", label_dim=3)).eval()
    x = torch.randn(2, 400, 128)
    with torch.no_grad():
        tokens = model.encode(x)
        timed = model(x, pooling="per_second", num_segments=4)
        official = model(x, pooling="official_1sec", num_segments=4)
        torch.testing.assert_close(timed, model.head(pool_per_second(tokens, 1, (8, 25), 16, 16, 100, 4)))
        torch.testing.assert_close(official, model.head(pool_official_1sec(tokens, 4)))
        torch.testing.assert_close(timed, model.per_second(x, num_segments=4))
    assert timed.shape == official.shape == (2, 4, 3)
    with pytest.raises(TrainingError, match=r"expected \(batch, 4, classes\)"):
        PerSecondTask(num_segments=4).logits(lambda x, **kw: torch.zeros(2, 3), x)


def synthetic_folds(root: Path, folds: int = 2, clips: int = 8) -> None:
    """Per fold, ``clips`` 1-s clips (the last one 0.3 s: an unlabelled second) of three tone classes, under
    ``audio/fold<k>/`` like UrbanSound8K, and the ``fold<k>_{train,eval}.json`` manifests `ssamba prepare` writes."""
    per_fold: dict[str, list[dict]] = {}
    for k in range(1, folds + 1):
        for i in range(clips):
            c = (i // 2 + k) % 3
            seconds = 0.3 if i == clips - 1 else 1.0
            t = np.arange(int(16000 * seconds)) / 16000
            path = root / "audio" / f"fold{k}" / f"{k}-{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * 2 ** c * t)).astype(np.float32), 16000)
            per_fold.setdefault(f"fold{k}", []).append({"wav": str(path), "labels": f"c{c}"})
    write_fold_manifests(root, per_fold, ["low", "mid", "high"])


@pytest.mark.parametrize("sequence,labelled", [
    ("{seconds: 4}", 8),  # packed (the recipe's): the 0.3-s clip padded to a whole, labelled second
    ("{seconds: 4, layout: slots, slot_seconds: 1.0, jitter: true}", 7),  # slots: its second is left unlabelled
])
def test_kfold_per_second_finetune_end_to_end(tmp_path, sequence: str, labelled: int) -> None:
    synthetic_folds(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["finetune", str(RECIPE), f"out_dir={out}", "model.init=null",
            "model.overrides={depth: 2, embed_dim: 64, drop_path_rate: 0.0}", f"data.fold_dir={tmp_path / 'data'}",
            "data.folds=[fold1, fold2]", f"data.class_labels={tmp_path / 'data' / 'labels.csv'}",
            "data.dataset.features.target_length=400", "data.dataset.augment={freqm: 8, timem: 16}",
            f"data.sequence={sequence}", "optim.lr=1e-3", "optim.scheduler=none",
            "train.epochs=2", "train.batch_size=2", "train.num_workers=0", "train.progress=false", "train.device=cpu"]
    assert main(argv) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["metric"] == "acc" and list(summary["folds"]) == ["fold1", "fold2"]
    assert summary["mean"] == pytest.approx(np.mean(list(summary["folds"].values())))
    curves = {}
    for fold in ("fold1", "fold2"):
        results = json.loads((out / fold / "results.json").read_text())
        assert results["steps"] == 2 and [h["epoch"] for h in results["history"]] == [1, 2]
        curves[fold] = [h["acc"] for h in results["history"]]
        best = results["best_valid"]
        assert 0.0 <= best["acc"] <= 1.0 and math.isfinite(best["loss"])
        # accuracy is over the fold's labelled seconds
        assert best["acc"] * labelled == pytest.approx(round(best["acc"] * labelled))
        assert "per_second" in (out / fold / "config.yaml").read_text()
    assert summary["folds"] == {f: c[summary["pass"] - 1] for f, c in curves.items()}  # one pass for all folds
    assert summary["fold_best"]["folds"] == {f: max(c) for f, c in curves.items()}
    # `ssamba evaluate` on the selected model reproduces its validation numbers (no augmentation, no jitter)
    best = json.loads((out / "fold2" / "results.json").read_text())["best_valid"]
    assert main(["evaluate", str(RECIPE), f"model.init={out / 'fold2' / 'best'}", f"out_dir={tmp_path / 'eval'}",
                 f"data.test={tmp_path / 'data' / 'fold2_eval.json'}", f"data.sequence={sequence}",
                 f"data.class_labels={tmp_path / 'data' / 'labels.csv'}", "data.dataset.features.target_length=400",
                 "train.num_workers=0", "train.device=cpu"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert evaluated["acc"] == pytest.approx(best["acc"]) and evaluated["loss"] == pytest.approx(best["loss"])


def test_too_short_input_for_the_labelled_seconds_is_a_clear_error(tmp_path, caplog) -> None:
    argv = ["finetune", str(RECIPE), f"out_dir={tmp_path}", "model.init=null", "data.folds=[fold1]",
            f"data.fold_dir={tmp_path}", "data.dataset.features.target_length=5000"]
    assert main(argv) != 0
    assert "target_length=5000 frames cannot hold the data.sequence.seconds=60" in caplog.text
