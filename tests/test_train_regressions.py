"""Regressions from the training audit: logs across resumes, K-fold seeding, reused run folders, epoch-counted
schedules with periodic validation, class order, fp16 on CPU, model.overrides checks, the non-finite-loss message."""
from __future__ import annotations

import csv
import os
import json
import logging
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _audio_helpers import write_fold_manifests
from test_train_engine import NanAfter, toy_classification

import ssamba
from ssamba.cli import main
from ssamba.config import ConfigError, load_config
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset
from ssamba.train.build import build_model, class_labels, make_dataset
from ssamba.train.config import RunConfig
from ssamba.train.distributed import DistEnv
from ssamba.train.config import TrainConfig
from ssamba.train.engine import Trainer, TrainingError
from ssamba.train.logger import RunLogger
from ssamba.train.optim import OptimConfig
from ssamba.train.run import run, run_evaluate
from ssamba.train.tasks import ClassificationTask
from ssamba.train.tensorboard import read_records

TIMING = "samples_per_s"  # wall-clock throughput: the one logged value that differs between identical runs


def tiny_classifier(seed: int = 0) -> AudioClassifier:
    torch.manual_seed(seed)
    enc = preset("ssamba", "tiny", depth=2, embed_dim=32, input_tdim=32, fstride=16, tstride=16)
    return AudioClassifier(ModelConfig(encoder=enc, task="classify", label_dim=3))


def trainer(out: Path, model=None, optim: OptimConfig | None = None, task=None, **train_kw) -> Trainer:
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 4, "progress": False,
                         **train_kw})
    optim = optim or OptimConfig(name="adam", lr=1e-3, scheduler="none", weight_decay=0.0)
    return Trainer(model or tiny_classifier(), task or ClassificationTask(), cfg, optim, out, DistEnv())


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value, pos, shift = value | (data[pos] & 0x7F) << shift, pos + 1, shift + 7
        if not data[pos - 1] & 0x80:
            return value, pos


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message; fixed-width values as raw bytes."""
    pos, out = 0, []
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            width = 8 if wire == 1 else 4
            value, pos = data[pos:pos + width], pos + width
        out.append((key >> 3, value))
    return out


def tensorboard_scalars(run: Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the run's event files, in file order, without the timing."""
    out = []
    for path in sorted((run / "tensorboard").iterdir()):
        for record in read_records(path):
            event = dict(_fields(record))
            for number, value in _fields(event.get(5, b"")):
                tag_value = dict(_fields(value))
                tag = tag_value[1].decode()
                if number == 1 and not tag.endswith(TIMING):
                    out.append((event.get(2, 0), tag, struct.unpack("<f", tag_value[2])[0]))
    return out


def logs(run: Path) -> tuple[list[dict], list[dict], list[tuple]]:
    jsonl = [{k: v for k, v in json.loads(line).items() if k != TIMING}
             for line in (run / "log.jsonl").read_text().splitlines()]
    with open(run / "log.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if k != TIMING} for row in csv.DictReader(f)]
    return jsonl, rows, tensorboard_scalars(run)


# --------------------------------------------------------------------------------------------- 1 and 5: logs
def test_new_logger_keeps_earlier_csv_rows_and_widens_the_header(tmp_path):
    first = RunLogger(tmp_path)
    first.log("train", 1, {"loss": 1.0, "lr": 0.1})
    first.log("valid", 1, {"loss": 0.5, "acc": 0.25})
    first.close()
    second = RunLogger(tmp_path)  # e.g. a resumed run: its first record has fewer columns than the file
    second.log("train", 2, {"loss": 0.75, "lr": 0.1})
    second.log("test", 2, {"f1": 0.5})  # a new column: the file is rewritten under the union of the columns
    with open(tmp_path / "log.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["split", "step", "loss", "lr", "acc", "f1"]
    assert rows == [
        {"split": "train", "step": "1", "loss": "1.0", "lr": "0.1", "acc": "", "f1": ""},
        {"split": "valid", "step": "1", "loss": "0.5", "lr": "", "acc": "0.25", "f1": ""},
        {"split": "train", "step": "2", "loss": "0.75", "lr": "0.1", "acc": "", "f1": ""},
        {"split": "test", "step": "2", "loss": "", "lr": "", "acc": "", "f1": "0.5"}]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resumed_run_logs_equal_an_uninterrupted_runs(tmp_path):
    """Killed at step 9 (validated at 9, last checkpoint at 8): the resumed run drops the records after step 8
    from log.jsonl, log.csv and TensorBoard and writes them again, so every log equals the uninterrupted run's."""
    data, valid = toy_classification(n=40), toy_classification(n=16, seed=1)  # 5 steps per epoch
    full = trainer(tmp_path / "full", eval_every=3)
    full.fit(data, valid)
    halted = trainer(tmp_path / "run", eval_every=3, halt_after_steps=9)
    with pytest.raises(SystemExit):
        halted.fit(data, valid)
    jsonl = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in jsonl[-2:]] == [("train", 9), ("valid", 9)]
    resumed = trainer(tmp_path / "run", tiny_classifier(seed=3), eval_every=3)
    resumed.resume(tmp_path / "run" / "checkpoints")
    assert resumed.step == 8
    resumed.fit(data, valid)
    expected, got = logs(tmp_path / "full"), logs(tmp_path / "run")
    assert [(r["split"], r["step"]) for r in got[0]].count(("valid", 9)) == 1
    assert got[0] == expected[0]  # log.jsonl
    assert got[1] == expected[1]  # log.csv
    assert got[2] == expected[2] and len(got[2]) > 40  # TensorBoard


def test_run_killed_after_an_epoch_end_validation_resumes_without_duplicates(tmp_path):
    """A checkpoint is the last thing done at its step: killed after logging the epoch-end validation (step 4) but
    before the epoch's checkpoint, the run resumes from step 2, not from a step-4 checkpoint taken before that
    validation, which would log it a second time."""
    data, valid = toy_classification(n=32), toy_classification(n=8, seed=1)  # 4 steps per epoch
    trainer(tmp_path / "full", checkpoint_every=2).fit(data, valid)
    halted = trainer(tmp_path / "run", checkpoint_every=2)

    def killed(name: str) -> None:
        raise SystemExit(f"killed while saving {name}/")

    halted._save_model = killed  # right after the step-4 validation is logged
    with pytest.raises(SystemExit, match="best"):
        halted.fit(data, valid)
    resumed = trainer(tmp_path / "run", tiny_classifier(seed=3), checkpoint_every=2)
    resumed.resume(tmp_path / "run" / "checkpoints")
    assert resumed.step == 2
    resumed.fit(data, valid)
    assert logs(tmp_path / "run") == logs(tmp_path / "full")


# --------------------------------------------------------------------------------------------- 4: multistep
def test_periodic_validation_does_not_count_as_an_epoch(tmp_path):
    optim = OptimConfig(name="adam", lr=1e-3, scheduler="multistep", decay_start=1, decay_every=1, decay_rate=0.5,
                        weight_decay=0.0)
    t = trainer(tmp_path, optim=optim, eval_every=2)
    t.fit(toy_classification(n=40), toy_classification(n=8, seed=1))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["split"] == "train"]
    assert lrs == [1e-3] * 5 + [5e-4] * 5  # epoch 1 at lr, epoch 2 decayed once
    assert [r["step"] for r in records if r["split"] == "valid"] == [2, 4, 6, 8, 10]
    assert t.schedule.epochs_done == 2


# --------------------------------------------------------------------------------------------- 9: NaN message
def test_nonfinite_loss_before_the_first_checkpoint_says_none_was_written(tmp_path):
    t = trainer(tmp_path, task=NanAfter(1), epochs=1, checkpoint_every=100)
    with pytest.raises(TrainingError) as err:
        t.fit(toy_classification(n=40))
    message = str(err.value)
    assert "non-finite loss (nan) at step 2" in message and "No checkpoint was written yet" in message
    assert "last good checkpoint" not in message and not (tmp_path / "checkpoints").exists()
    assert t.step == 1 and all(torch.isfinite(p).all() for p in t.model.parameters())  # no NaN update taken


# --------------------------------------------------------------------------------------------- 7: fp16 on CPU
def test_fp16_on_cpu_is_rejected_up_front(tmp_path):
    with pytest.raises(ConfigError, match=r"train.amp=fp16 needs a CUDA device.*use train.amp=bf16"):
        trainer(tmp_path / "t", amp="fp16", device="cpu")
    cfg = RunConfig(out_dir=str(tmp_path / "run"))
    cfg.train.amp, cfg.train.device = "fp16", "cpu"
    with pytest.raises(ConfigError, match="train.amp=fp16 needs a CUDA device"):
        run(cfg)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- 8: overrides
@pytest.mark.parametrize("override, message", [
    ("model.overrides.dpeth=2", r"model.overrides.dpeth: unknown key; valid keys: \[.*'depth'"),
    ("model.overrides.depth=two", "model.overrides.depth: expected int, got 'two'"),
    ("model.overrides.drop_path_rate=high", "model.overrides.drop_path_rate: expected a number, got 'high'"),
    ("model.overrides.input_tdim=64", "model.overrides.input_tdim: set by data.dataset.features.target_length"),
])
def test_model_overrides_are_checked_by_name_and_type(tmp_path, caplog, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RunConfig, None, [override])
    (tmp_path / "recipe.yaml").write_text("task: finetune\n")
    assert main(["finetune", str(tmp_path / "recipe.yaml"), f"out_dir={tmp_path / 'run'}", override]) == 2
    assert "model.overrides." in caplog.text and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train: batch_size=0: must be >= 1"),  # was a ZeroDivisionError after the logs began
    ("train.checkpoint_every=0", "train: checkpoint_every=0: must be >= 1"),
    ("train.log_every=-5", "train: log_every=-5: must be >= 1"),
    ("train.eval_every=0", "train: eval_every=0: must be >= 1"),  # was: silently no validation but the last
    ("train.num_workers=-1", "train: num_workers=-1"),
    ("optim.decay_every=0", "optim: decay_every=0"),  # was: "range() arg 3 must not be zero"
    ("optim.lr=nan", "optim: lr=nan: must be a positive number"),
    ("optim.grad_clip=0", "optim: grad_clip=0.0: must be positive"),
    ("pretrain.mask_size=0", "pretrain: mask_size=0"),
    ("probe.epochs=0", "probe: epochs=0"),
])
def test_out_of_range_values_are_refused_naming_the_key(tmp_path, caplog, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(RunConfig, None, [override])
    (tmp_path / "recipe.yaml").write_text("task: finetune\n")
    assert main(["finetune", str(tmp_path / "recipe.yaml"), f"out_dir={tmp_path / 'run'}", override]) == 2
    assert message in caplog.text and not (tmp_path / "run").exists()


def test_absent_data_files_are_named_by_their_key_before_anything_runs(tmp_path, caplog):
    (tmp_path / "train.json").write_text('{"data": []}')
    (tmp_path / "recipe.yaml").write_text("task: pretrain\ndata:\n  valid: data/pretrain/valid.json\n")
    run = tmp_path / "run"
    recipe = str(tmp_path / "recipe.yaml")
    assert main(["pretrain", recipe, f"out_dir={run}", f"data.train={tmp_path / 'train.json'}"]) == 2
    assert "data.valid: data/pretrain/valid.json not found (give the file, or key=null" in caplog.text
    assert main(["finetune", recipe, f"out_dir={run}", "data.valid=null", f"data.fold_dir={tmp_path}",
                 "data.folds=[fold1]"]) == 2
    assert f"data.folds (fold1 train, in data.fold_dir): {tmp_path / 'fold1_train.json'} not found" in caplog.text
    assert not run.exists()


def test_an_empty_section_in_a_recipe_takes_overrides(tmp_path):
    (tmp_path / "recipe.yaml").write_text("task: pretrain\npretrain:\ntrain:\n")
    cfg = load_config(RunConfig, tmp_path / "recipe.yaml", ["pretrain.mask_size=250", "train.epochs=3"])
    assert cfg.pretrain.mask_size == 250 and cfg.train.epochs == 3


def test_a_misspelt_device_is_refused_not_run_on_the_cpu():
    """train.device=gpu once passed the loader and trained on the CPU without a word."""
    for value in ("gpu", "GPU", "cuda:1"):
        with pytest.raises(ConfigError, match=f"train.device.*{value!r}"):
            load_config(RunConfig, None, [f"train.device={value}"])
    assert load_config(RunConfig, None, ["train.device=cpu"]).train.device == "cpu"


def test_model_overrides_are_coerced_like_other_keys():
    cfg = load_config(RunConfig, None, ["model.overrides={depth: 2, drop_path_rate: 0, norm_eps: 1e-6}"])
    assert cfg.model.overrides == {"depth": 2, "drop_path_rate": 0.0, "norm_eps": 1e-6}
    assert isinstance(cfg.model.overrides["drop_path_rate"], float)


# --------------------------------------------------------------------------------------------- 6: class order
def test_classifier_with_other_class_order_is_refused(tmp_path):
    torch.manual_seed(0)
    enc = preset("ssamba", "tiny", depth=2, embed_dim=32, input_tdim=32, fstride=16, tstride=16)
    model = AudioClassifier(ModelConfig(encoder=enc, task="classify", label_dim=3, labels=["dog", "cat", "bird"]))
    model.save_pretrained(tmp_path / "model")
    rows = "index,mid,display_name\n0,/m/b,bird\n1,/m/c,cat\n2,/m/d,dog\n"  # the same classes, sorted
    (tmp_path / "labels.csv").write_text(rows)
    cfg = load_config(RunConfig, None, [f"model.init={tmp_path / 'model'}", f"data.test={tmp_path / 'absent.json'}",
                                        f"data.class_labels={tmp_path / 'labels.csv'}", "train.device=cpu",
                                        "data.dataset.features.target_length=32"])
    message = r"trained on the same classes in another order .* output 0 is 'dog' for the model but 'bird'"
    with pytest.raises(TrainingError, match=message):
        run_evaluate(cfg)
    with pytest.raises(TrainingError, match=message):
        build_model(cfg, class_labels(cfg))  # finetune model.init=<classifier>
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n0,/m/d,dog\n1,/m/c,cat\n2,/m/b,bird\n")
    assert build_model(cfg, class_labels(cfg)).config.labels == ["dog", "cat", "bird"]


# --------------------------------------------------------------------------------------------- CLI runs: 2, 3
def clip_folds(root: Path) -> None:
    """Two folds of eight 0.5-s tones of two classes, with the manifests and class list `ssamba prepare` writes."""
    per_fold: dict[str, list[dict]] = {}
    t = np.arange(8000) / 16000
    for k in (1, 2):
        for i in range(8):
            path = root / f"{k}-{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (0.3 * np.sin(2 * np.pi * (300 + 40 * i + 400 * (i % 2)) * t)).astype(np.float32), 16000)
            per_fold.setdefault(f"fold{k}", []).append({"wav": str(path), "labels": f"c{i % 2}"})
    write_fold_manifests(root, per_fold, ["low", "high"])
    (root / "recipe.yaml").write_text("task: finetune\n")


def tiny_args(data: Path, out: Path) -> list[str]:
    return ["finetune", str(data / "recipe.yaml"), f"out_dir={out}",
            "model.overrides={depth: 2, embed_dim: 32, drop_path_rate: 0.1}", "model.fstride=16", "model.tstride=16",
            f"data.class_labels={data / 'labels.csv'}",
            "data.dataset.features.target_length=32", "data.dataset.augment={mixup: 0.5, freqm: 8, timem: 8}",
            "optim.lr=1e-3", "optim.scheduler=none", "train.epochs=1", "train.batch_size=4", "train.log_every=1",
            "train.checkpoint_every=100", "train.progress=false", "train.device=cpu", "train.num_workers=0"]


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folds")
    clip_folds(root)
    return root


def fold_result(run: Path, fold: str) -> tuple[dict, list]:
    results = json.loads((run / fold / "results.json").read_text())
    losses = [r["loss"] for r in map(json.loads, (run / fold / "log.jsonl").read_text().splitlines())]
    return {k: results[k] for k in ("steps", "best_valid", "history")}, losses


def test_kfold_resume_gives_each_fold_the_result_of_an_uninterrupted_run(folds, tmp_path):
    kfold = [f"data.fold_dir={folds}", "data.test=null"]
    assert main([*tiny_args(folds, tmp_path / "full"), *kfold, "data.folds=[fold1, fold2]"]) == 0
    # killed between the folds: fold1 is done, fold2 not started; --resume skips fold1 and runs fold2
    assert main([*tiny_args(folds, tmp_path / "res"), *kfold, "data.folds=[fold1]"]) == 0
    assert main([*tiny_args(folds, tmp_path / "res"), *kfold, "data.folds=[fold1, fold2]", "--resume"]) == 0
    assert fold_result(tmp_path / "res", "fold2") == fold_result(tmp_path / "full", "fold2")
    assert (json.loads((tmp_path / "res" / "results.json").read_text())
            == json.loads((tmp_path / "full" / "results.json").read_text()))
    # a fold's seed depends on its name, not on its position in the list
    assert main([*tiny_args(folds, tmp_path / "one"), *kfold, "data.folds=[fold2]"]) == 0
    assert fold_result(tmp_path / "one", "fold2") == fold_result(tmp_path / "full", "fold2")


def test_kfold_resume_with_more_epochs_continues_the_finished_folds(folds, tmp_path, caplog):
    """Raising train.epochs and resuming trains every fold on to the new length, as an uninterrupted run of that
    length would (a fold with a results.json was once skipped as done whatever the new length)."""
    caplog.set_level(logging.INFO, logger="ssamba.train.run")
    kfold = [f"data.fold_dir={folds}", "data.test=null", "data.folds=[fold1, fold2]", "train.checkpoint_every=1"]
    assert main([*tiny_args(folds, tmp_path / "full"), *kfold, "train.epochs=2"]) == 0
    assert main([*tiny_args(folds, tmp_path / "res"), *kfold]) == 0
    assert main([*tiny_args(folds, tmp_path / "res"), *kfold, "train.epochs=2", "--resume"]) == 0
    assert "fold fold1 ended at epoch 1 (step 2), short of this run's length: continuing it" in caplog.text
    for fold in ("fold1", "fold2"):
        assert fold_result(tmp_path / "res", fold) == fold_result(tmp_path / "full", fold)
        assert json.loads((tmp_path / "res" / fold / "results.json").read_text())["epochs"] == 2
    caplog.clear()  # resumed again at the length reached, from the run's own config.yaml: nothing is trained
    results = (tmp_path / "res" / "results.json").read_text()
    assert main(["finetune", str(tmp_path / "res" / "config.yaml"), "--resume"]) == 0
    assert caplog.text.count("already done; skipping") == 2
    assert (tmp_path / "res" / "results.json").read_text() == results


def test_kfold_with_dev_splits_selects_on_training_clips_and_scores_the_eval_fold(folds, tmp_path, caplog):
    """data.fold_valid_ratio (s3prl's valid_ratio): a seeded share of each fold's training clips selects the model
    and the fold's eval split is only its test set; the summary is the folds' test scores."""
    caplog.set_level(logging.INFO, logger="ssamba.train.run")
    kfold = [f"data.fold_dir={folds}", "data.test=null", "data.folds=[fold1, fold2]", "data.fold_valid_ratio=0.25",
             "train.epochs=2"]
    assert main([*tiny_args(folds, tmp_path / "run"), *kfold]) == 0
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["rule"] == "dev" and list(summary["folds"]) == ["fold1", "fold2"]
    for fold in ("fold1", "fold2"):
        split = tmp_path / "run" / fold / "dev_split"
        train, valid = (json.loads((split / f"{name}.json").read_text())["data"] for name in ("train", "valid"))
        whole = json.loads((folds / f"{fold}_train.json").read_text())["data"]
        assert len(valid) == 2 and len(train) == 6 and sorted(map(str, train + valid)) == sorted(map(str, whole))
        results = json.loads((tmp_path / "run" / fold / "results.json").read_text())
        config = (tmp_path / "run" / fold / "config.yaml").read_text()
        assert f"valid: {split / 'valid.json'}" in config and f"test: {folds / f'{fold}_eval.json'}" in config
        assert summary["folds"][fold] == results["test"]["acc"] and summary["dev"][fold] == results["best_valid"]["acc"]
    assert summary["mean"] == pytest.approx(np.mean(list(summary["folds"].values())))
    assert "each fold's test split scored with the model its dev split selected" in caplog.text
    # the split is the same on a second run (seeded by the fold's name)
    assert main([*tiny_args(folds, tmp_path / "again"), *kfold, "data.folds=[fold2]"]) == 0
    assert ((tmp_path / "again" / "fold2" / "dev_split" / "valid.json").read_text()
            == (tmp_path / "run" / "fold2" / "dev_split" / "valid.json").read_text())


def test_hold_out_is_seeded_and_keeps_order():
    from ssamba.data.manifest import Entry, hold_out

    entries = [Entry(f"{i}.wav", ("c",)) for i in range(10)]
    kept, held = hold_out(entries, 0.2, seed=3)
    assert len(held) == 2 and sorted(kept + held, key=lambda e: int(e.path[:-4])) == entries
    assert kept == [e for e in entries if e not in held] and held == sorted(held, key=lambda e: int(e.path[:-4]))
    assert hold_out(entries, 0.2, seed=3) == (kept, held) and hold_out(entries, 0.2, seed=4) != (kept, held)
    assert len(hold_out(entries[:2], 0.01, seed=0)[1]) == 1 and len(hold_out(entries[:2], 0.99, seed=0)[0]) == 1
    with pytest.raises(ValueError, match="cannot be split"):
        hold_out(entries[:1], 0.5, seed=0)


def test_new_run_refuses_a_folder_with_a_previous_run(folds, tmp_path, caplog):
    args = [*tiny_args(folds, tmp_path / "run"), f"data.train={folds / 'fold1_train.json'}",
            f"data.valid={folds / 'fold1_eval.json'}"]
    assert main(args) == 0
    before = (tmp_path / "run" / "log.jsonl").read_text()
    assert main([*args, "optim.lr=1e-2"]) == 2
    assert f"{tmp_path / 'run'} already holds a previous run (checkpoints, log.jsonl" in caplog.text
    assert "pass --resume to continue it" in caplog.text
    assert (tmp_path / "run" / "log.jsonl").read_text() == before  # nothing appended
    # K-fold: refused before any fold runs
    assert main([*tiny_args(folds, tmp_path), f"data.fold_dir={folds}", "data.folds=[fold1, run]"]) == 2
    assert not (tmp_path / "fold1").exists()


def test_test_metrics_come_from_the_model_this_run_trained(folds, tmp_path):
    """A run killed before its first checkpoint leaves a ``best/``; resumed without validation, the run starts over
    and its test metrics are those of its own final model, not of that ``best/``."""
    base = [*tiny_args(folds, tmp_path / "run"), f"data.train={folds / 'fold1_train.json'}",
            f"data.test={folds / 'fold2_eval.json'}", "train.epochs=2"]  # 2 steps per epoch
    with pytest.raises(SystemExit, match="halt_after_steps"):
        main([*base, f"data.valid={folds / 'fold1_eval.json'}", "train.eval_every=1", "train.halt_after_steps=2"])
    assert (tmp_path / "run" / "best").is_dir() and not (tmp_path / "run" / "checkpoints").exists()
    assert main([*base, "data.valid=null", "optim.lr=3e-3", "--resume"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["best_valid"]["step"] is None
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # the killed attempt's records are gone
    assert main(["evaluate", str(folds / "recipe.yaml"), f"model.init={tmp_path / 'run' / 'final'}",
                 f"data.test={folds / 'fold2_eval.json'}", f"data.class_labels={folds / 'labels.csv'}",
                 f"out_dir={tmp_path / 'eval'}", "train.device=cpu", "train.num_workers=0", "train.batch_size=4",
                 "data.dataset.features.target_length=32"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert {k: evaluated[k] for k in results["test"]} == results["test"]


def test_bad_training_files_are_listed_in_the_results_and_bad_test_files_are_errors(folds, tmp_path, caplog):
    train = json.loads((folds / "fold1_train.json").read_text())["data"]
    missing = str(tmp_path / "gone.wav")
    (tmp_path / "train.json").write_text(json.dumps({"data": train + [{"wav": missing, "labels": "c0"}]}))
    args = [*tiny_args(folds, tmp_path / "run"), f"data.train={tmp_path / 'train.json'}", "data.valid=null"]
    assert main([*args, f"data.test={folds / 'fold1_eval.json'}"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["bad_files"]) == [missing] and "file not found" in results["bad_files"][missing]
    assert "test" in results  # the run went on without the file
    (tmp_path / "test.json").write_text(json.dumps({"data": [{"wav": missing, "labels": "c0"}]}))
    assert main([*tiny_args(folds, tmp_path / "run2"), f"data.train={folds / 'fold1_train.json'}",
                 "data.valid=null", f"data.test={tmp_path / 'test.json'}"]) == 2
    assert "gone.wav: file not found (an evaluation set does not replace unreadable clips" in caplog.text


def test_train_seed_changes_the_augmentation_draws(folds, tmp_path):
    def first_batch(seed: int) -> torch.Tensor:
        cfg = load_config(RunConfig, None, [*tiny_args(folds, tmp_path)[3:], f"data.train={folds / 'fold1_train.json'}",
                                            f"train.seed={seed}"])
        dataset = make_dataset(cfg.data.train, class_labels(cfg), cfg, train=True)
        return torch.stack([dataset[i][0] for i in range(4)])

    assert torch.equal(first_batch(1), first_batch(1)) and not torch.equal(first_batch(1), first_batch(2))


def test_resume_flag_may_sit_before_the_overrides_and_a_probe_refuses_it(folds, tmp_path, caplog):
    args = [*tiny_args(folds, tmp_path / "run"), f"data.train={folds / 'fold1_train.json'}", "data.valid=null"]
    assert main(args) == 0
    before = (tmp_path / "run" / "results.json").read_text()
    assert main([args[0], args[1], "--resume", *args[2:]]) == 0  # `ssamba finetune CONFIG --resume k=v ...`
    assert (tmp_path / "run" / "results.json").read_text() == before  # resumed from the end: the same results
    (tmp_path / "probe.yaml").write_text("task: probe\n")
    assert main(["probe", str(tmp_path / "probe.yaml"), "--resume", f"out_dir={tmp_path / 'p'}"]) == 2
    assert "a probe has nothing to resume" in caplog.text


def test_resume_refuses_a_changed_setup_and_keeps_the_runs_config(folds, tmp_path, caplog):
    base = [*tiny_args(folds, tmp_path / "run"), f"data.train={folds / 'fold1_train.json'}", "data.valid=null",
            "train.checkpoint_every=1"]
    with pytest.raises(SystemExit, match="halt_after_steps"):
        main([*base, "train.halt_after_steps=2"])
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "halt_after_steps: null" in config  # resuming from the run's own config.yaml does not stop again
    assert main([*base, "data.dataset.augment.mixup=0", "--resume"]) == 2  # the first steps trained with mixup
    assert "train_data.pipeline:" in caplog.text
    assert main([*base, "optim.lr=0.5", "--resume"]) == 2  # the optimiser state would keep lr 1e-3 silently
    assert "optim.lr: 0.001 -> 0.5" in caplog.text and "last.pt: this checkpoint was written with" in caplog.text
    assert main([*base, "train.batch_size=2", "--resume"]) == 2
    assert "batch_size: 4 -> 2" in caplog.text
    assert main([*base, f"data.train={folds / 'fold2_train.json'}", "--resume"]) == 2  # other clips, same size
    assert "train_data.digest:" in caplog.text
    (tmp_path / "more.json").write_text(json.dumps({"data": json.loads((folds / "fold1_train.json").read_text())["data"]
                                                    + json.loads((folds / "fold1_eval.json").read_text())["data"]}))
    assert main([*base, f"data.train={tmp_path / 'more.json'}", "--resume"]) == 2
    assert "train_data.samples: 8 -> 16" in caplog.text
    for override, change in (("finetune.metric=mAP", "objective.metric: 'acc' -> 'mAP'"),
                             ("finetune.loss=bce", "objective.loss: 'ce' -> 'bce'"),
                             (f"data.valid={folds / 'fold1_eval.json'}", "objective.valid: None -> "),
                             ("train.amp=bf16", "objective.amp: 'none' -> 'bf16'")):
        # the checkpoint's best metric would be compared with another metric, on other data or another loss
        assert main([*base, override, "--resume"]) == 2
        assert change in caplog.text
    assert (tmp_path / "run" / "config.yaml").read_text() == config  # a refused resume leaves the run's config
    assert main([*base, "train.epochs=2", "--resume"]) == 0  # the run's length may change


def test_ddp_evaluation_with_a_rank_that_holds_no_item(monkeypatch):
    """An evaluation set smaller than the number of processes leaves a rank empty: it contributes nothing."""
    from ssamba.train import tasks

    monkeypatch.setattr(tasks, "gather_objects", lambda obj, env: [obj, None if not isinstance(obj, tuple) or
                                                                   not isinstance(obj[1], int) else ({}, 0)])
    model = torch.nn.Linear(3, 2)
    loader = [(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))]
    single = tasks.ClassificationTask().evaluate(model, loader, DistEnv())
    monkeypatch.undo()
    assert single["acc"] == tasks.ClassificationTask().evaluate(model, loader, DistEnv())["acc"]
    assert tasks.predict(model, []) is None


def test_probe_embeddings_with_a_rank_that_holds_no_item(monkeypatch):
    """Under DDP a split smaller than the number of processes leaves a rank empty: the probe gathers the others'
    embeddings (it once failed on the empty rank with "need at least one array to concatenate")."""
    from ssamba.train import probe

    other = ([np.ones((1, 3)), np.full((1, 3), 2.0)], np.eye(2)[:1])  # rank 0: one clip, two layers
    monkeypatch.setattr(probe, "gather_objects", lambda mine, env: [other, mine])
    layers, targets = probe.extract_embeddings(torch.nn.Identity(), [], 2, DistEnv())  # this rank: no batch
    assert [x.tolist() for x in layers] == [[[1.0] * 3], [[2.0] * 3]] and targets.tolist() == [[1.0, 0.0]]
    monkeypatch.setattr(probe, "gather_objects", lambda mine, env: [mine, None])
    with pytest.raises(TrainingError, match="no clips to embed"):
        probe.extract_embeddings(torch.nn.Identity(), [], 2, DistEnv())


def test_probe_embeddings_come_back_in_the_splits_order(monkeypatch):
    """Rank r embeds clips r, r + world, ...: gathered in rank order, the probe's training rows (and so its shuffled
    minibatches and its scores) once depended on the number of processes."""
    from ssamba.train import probe

    def part(indices):  # what a rank holds: clip i's embedding is i in every layer; targets one-hot of i % 2
        x = np.array(indices, dtype=float)[:, None]
        return [x, 10 * x], np.eye(2)[[i % 2 for i in indices]]

    for n, ranks in ((6, [part([0, 4]), part([1, 5]), part([2]), part([3])]),  # 6 clips on 4 ranks
                     (3, [part([0]), part([1]), part([2]), None])):  # 3 clips: the last rank holds none
        monkeypatch.setattr(probe, "gather_objects", lambda mine, env: ranks)
        layers, targets = probe.extract_embeddings(torch.nn.Identity(), [], 2, DistEnv())
        assert layers[0][:, 0].tolist() == list(range(n)) and layers[1][:, 0].tolist() == [10 * i for i in range(n)]
        assert targets.argmax(1).tolist() == [i % 2 for i in range(n)]


def test_a_torn_fold_result_is_redone_on_resume(folds, tmp_path, caplog):
    kfold = [f"data.fold_dir={folds}", "data.test=null", "data.folds=[fold1, fold2]"]
    assert main([*tiny_args(folds, tmp_path / "run"), *kfold]) == 0
    whole = (tmp_path / "run" / "fold2" / "results.json").read_text()
    (tmp_path / "run" / "fold2" / "results.json").write_text(whole[:200])  # killed mid-write by an old version
    assert main([*tiny_args(folds, tmp_path / "run"), *kfold, "--resume"]) == 0
    assert "fold2/results.json: unreadable" in caplog.text
    assert json.loads((tmp_path / "run" / "fold2" / "results.json").read_text()) == json.loads(whole)


def test_atomic_writes_leave_readable_files_and_no_orphans(tmp_path):
    from ssamba.atomic import atomic_write_text

    orphan = tmp_path / ".model.json.abc123.tmp"
    orphan.write_text("left by a writer killed mid-write")
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "model.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "model.json").stat().st_mode & 0o777 == 0o644 and not orphan.exists()


def test_atomic_writes_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    """The data is flushed before the rename (or a power loss can leave the new name on an empty file) and the
    folder after it (or the rename itself can be lost)."""
    from ssamba import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    atomic.atomic_write_text(tmp_path / "model.json", "{}")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".model.json.")) and events[2][1] == str(tmp_path)


def test_short_runs_are_told_when_warm_up_outlasts_them(folds, tmp_path, caplog):
    assert main([*tiny_args(folds, tmp_path / "run"), f"data.train={folds / 'fold1_train.json'}", "data.valid=null",
                 "optim.warmup_steps=1000"]) == 0
    assert "optim.warmup_steps=1000 >= the run's 2 steps: the learning rate never reaches optim.lr" in caplog.text


def test_a_trained_model_carries_its_normalisation_to_predict(folds, tmp_path):
    args = [*tiny_args(folds, tmp_path / "run"), f"data.train={folds / 'fold1_train.json'}", "data.valid=null",
            "data.dataset.features.mean=-3.5", "data.dataset.features.std=2.5"]
    assert main(args) == 0
    model = ssamba.load(tmp_path / "run" / "final")
    assert model.config.norm_stats == [-3.5, 2.5]
    clip = str(json.loads((folds / "fold1_eval.json").read_text())["data"][0]["wav"])
    default, explicit = model.predict(clip), model.predict(clip, stats=(-3.5, 2.5))
    np.testing.assert_array_equal(default.scores, explicit.scores)
    assert not np.array_equal(default.scores, model.predict(clip, stats="audioset").scores)


def test_evaluation_seeds_the_cpu_generator_only(monkeypatch):
    """Validation draws its (pretraining) masks from a fixed seed without touching the training streams: it once
    called torch.manual_seed, which also re-seeds every CUDA generator (not restored), so on GPUs every rank drew
    the same drop-path masks after each validation."""
    from ssamba.train import tasks
    from ssamba.train.config import TrainConfig
    from ssamba.train.engine import evaluate

    cuda_seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: cuda_seeds.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: cuda_seeds.append(seed))

    class Draw(tasks.ClassificationTask):
        def evaluate(self, model, loader, env):
            return {"draw": float(torch.rand(()))}

    model, data = torch.nn.Linear(3, 2), [(torch.randn(3), 0)]
    torch.manual_seed(123)
    cuda_seeds.clear()
    before = torch.get_rng_state()
    first = evaluate(model, data, Draw(), DistEnv(), TrainConfig(seed=5))
    assert torch.equal(torch.get_rng_state(), before) and cuda_seeds == []
    assert evaluate(model, data, Draw(), DistEnv(), TrainConfig(seed=5)) == first  # the fixed seed
    assert evaluate(model, data, Draw(), DistEnv(), TrainConfig(seed=6)) != first
