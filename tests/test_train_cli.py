"""End to end on ../shared/data/tts-commands through the CLI: prepare, pretrain, fine-tune, evaluate, probe."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED

from ssamba.cli import main
from ssamba.data.manifest import read_manifest, write_json_manifest

WORDS = ["yes", "no", "up", "down", "stop"]
COMMON = ["model.arch=ssamba", "model.size=tiny", "model.overrides={depth: 2, drop_path_rate: 0.0}",
          "data.dataset.features.target_length=100", "train.progress=false", "train.log_every=5",
          "train.seed=0", "train.num_workers=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sc")
    assert main(["prepare", "speechcommands", "--root", str(SHARED / "data" / "tts-commands"), "--out", str(out),
                 "--classes", "found"]) == 0
    # a five-word subset for a fine-tune short enough for CI
    for split in ("train", "validation", "test"):
        entries = [e for e in read_manifest(out / f"{split}.json") if e.labels[0] in WORDS]
        write_json_manifest(entries, out / f"{split}_5.json")
    (out / "labels_5.csv").write_text("index,mid,display_name\n" + "".join(f"{i},{w},{w}\n"
                                                                          for i, w in enumerate(WORDS)))
    return out


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrain")
    argv = ["pretrain", str(Path(__file__).resolve().parents[1] / "recipes" / "pretrain_tiny.yaml"), *COMMON,
            f"out_dir={run}", f"data.train={corpus / 'train.json'}", f"data.valid={corpus / 'validation.json'}",
            "pretrain.mask_size=12", "pretrain.eval_mask_size=12", "optim.warmup_steps=0", "optim.lr=1e-3",
            "train.batch_size=16", "train.epochs=2", "train.max_steps=50", "train.num_workers=0",
            "train.eval_every=25"]
    assert main(argv) == 0
    return run


def test_pretraining_lowers_the_joint_loss(pretrained):
    train = records(pretrained, "train")
    first, last = sum(r["loss"] for r in train[:3]) / 3, sum(r["loss"] for r in train[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    valid = records(pretrained, "valid")
    assert [r["step"] for r in valid] == [25, 50] and valid[-1]["loss"] < valid[0]["loss"]
    assert (pretrained / "final" / "config.json").is_file() and (pretrained / "config.yaml").is_file()


def finetune_args(corpus: Path, run: Path, init: str) -> list[str]:
    return [*COMMON, f"out_dir={run}", f"model.init={init}", "model.fstride=10", "model.tstride=10",
            f"data.train={corpus / 'train_5.json'}", f"data.valid={corpus / 'validation_5.json'}",
            f"data.test={corpus / 'test_5.json'}", f"data.class_labels={corpus / 'labels_5.csv'}",
            "optim.lr=3e-4", "optim.scheduler=none", "train.batch_size=16", "train.epochs=10"]


def test_finetune_from_pretrained_beats_chance_then_evaluate(corpus, pretrained, tmp_path):
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "speechcommands_v2.yaml")
    run = tmp_path / "ft"
    argv = ["finetune", recipe, *finetune_args(corpus, run, str(pretrained / "final")),
            "data.dataset.augment={freqm: 0, timem: 0, mixup: 0.0, noise: false}", "optim.warmup_steps=0",
            "finetune.loss=ce"]
    assert main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    chance = 1 / len(WORDS)
    # 48 TTS clips per word: a linear model on pooled log-mels gets ~0.55 here; chance is 0.2
    assert results["best_valid"]["acc"] >= 2 * chance, results["best_valid"]
    assert results["test"]["acc"] >= chance + 0.1, results["test"]
    # the evaluate command reproduces the selected model's test accuracy
    assert main(["evaluate", recipe, f"model.init={run / 'best'}", f"data.test={corpus / 'test_5.json'}",
                 f"data.class_labels={corpus / 'labels_5.csv'}", f"out_dir={tmp_path / 'eval'}",
                 "data.dataset.features.target_length=100", "train.num_workers=0"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert evaluated["acc"] == pytest.approx(results["test"]["acc"])
    # without a class list, the class names the model recorded in training are used
    assert main(["evaluate", recipe, f"model.init={run / 'best'}", f"data.test={corpus / 'test_5.json'}",
                 "data.class_labels=null", f"out_dir={tmp_path / 'eval2'}",
                 "data.dataset.features.target_length=100", "train.num_workers=0"]) == 0
    evaluated = json.loads((tmp_path / "eval2" / "eval_results.json").read_text())
    assert evaluated["acc"] == pytest.approx(results["test"]["acc"])


def test_linear_probe_end_to_end(corpus, pretrained, tmp_path):
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "probe_speechcommands.yaml")
    argv = ["probe", recipe, *COMMON, f"out_dir={tmp_path}", f"model.init={pretrained / 'final'}",
            "model.fstride=16", "model.tstride=16", f"data.train={corpus / 'train_5.json'}",
            f"data.valid={corpus / 'validation_5.json'}", f"data.test={corpus / 'test_5.json'}",
            f"data.class_labels={corpus / 'labels_5.csv'}", "probe.epochs=30"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "probe_results.json").read_text())
    layers = results["layers"]
    assert [r["layer"] for r in layers] == ["layer 1", "output"]
    assert max(r["test acc"] for r in layers) > 1 / len(WORDS)
    # the best layer is chosen on the validation split, and its test score is reported beside it
    best = max(layers, key=lambda r: r["valid acc"])
    assert results["selected_on"] == "valid" and results["best_layer"] == best["layer"] and results["best"] == best
    # without data.valid it is chosen on test, and marked so
    assert main([*argv, "data.valid=null", f"out_dir={tmp_path / 'test_only'}"]) == 0
    test_only = json.loads((tmp_path / "test_only" / "probe_results.json").read_text())
    assert test_only["selected_on"] == "test" and "valid acc" not in test_only["layers"][0]


def test_bad_config_is_a_clear_error(tmp_path, caplog):
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "esc50.yaml")
    assert main(["finetune", recipe, "optim.lrr=1"]) == 2
    assert "lrr" in caplog.text
    assert main(["finetune", recipe, f"out_dir={tmp_path}", "model.init=null",
                 f"data.class_labels={tmp_path / 'absent.csv'}"]) == 2
    assert "absent.csv" in caplog.text
