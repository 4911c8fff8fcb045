"""Every recipe loads, validates, and builds its model and data pipeline against a small synthetic corpus."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssamba.config import load_config
from ssamba.data.manifest import ClassLabels
from ssamba.models.classifier import AudioClassifier
from ssamba.models.heads import pool_official_1sec
from ssamba.pretrain.model import MaskedPatchModel
from ssamba.train.build import build_model, class_labels, make_dataset, make_task
from ssamba.train.config import RunConfig
from ssamba.train.per_second import PerSecondTask

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def synthetic_corpus(root: Path, manifests: list[str], num_classes: int = 3) -> None:
    """Tones of a few lengths at 16 and 44.1 kHz, one manifest per requested path, and a class list."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(4):
        sr = 16000 if i % 2 else 44100
        t = np.arange(int(sr * (0.5 + i)), dtype=np.float32) / sr
        path = root / f"clip{i}.wav"
        sf.write(path, 0.3 * np.sin(2 * np.pi * (220 + 100 * i) * t), sr)
        entries.append({"wav": str(path), "labels": f"c{i % num_classes}"})
    for manifest in manifests:
        Path(manifest).parent.mkdir(parents=True, exist_ok=True)
        Path(manifest).write_text(json.dumps({"data": entries}))
    rows = ["index,mid,display_name"] + [f"{k},c{k},class {k}" for k in range(num_classes)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_model_and_data(recipe, tmp_path):
    cfg = load_config(RunConfig, recipe)
    assert cfg.task in ("pretrain", "finetune", "probe")
    manifests = {k: getattr(cfg.data, k) for k in ("train", "valid", "test") if getattr(cfg.data, k)}
    overrides = [f"data.{k}={tmp_path / 'data' / Path(v).name}" for k, v in manifests.items()]
    fold_files = []
    if cfg.data.folds:
        overrides.append(f"data.fold_dir={tmp_path / 'data'}")
        fold_files = [str(tmp_path / "data" / f"{f}_{part}.json") for f in cfg.data.folds for part in ("train", "eval")]
    overrides += [f"data.class_labels={tmp_path / 'corpus' / 'labels.csv'}", "model.init=null"]
    cfg = load_config(RunConfig, recipe, overrides)
    synthetic_corpus(tmp_path / "corpus", [o.split("=", 1)[1] for o in overrides if o.startswith("data.")
                                           and o.endswith(".json")] + fold_files)
    labels = None if cfg.task == "pretrain" else class_labels(cfg)
    with torch.device("meta"):  # shapes only: base models would take seconds to initialise for real
        model = build_model(cfg, labels)
    expected = MaskedPatchModel if cfg.task == "pretrain" else AudioClassifier
    assert isinstance(model, expected) and model.config.encoder.size == cfg.model.size
    frames = cfg.data.dataset.features.target_length
    assert model.config.encoder.input_tdim == frames
    train_manifest = cfg.data.train or str(Path(cfg.data.fold_dir) / f"{cfg.data.folds[0]}_train.json")
    dataset = make_dataset(train_manifest, labels, cfg, train=True)
    x, target = dataset[min(1, len(dataset) - 1)]  # the four clips make a single 60-s sequence
    assert x.shape == (frames, 128) and torch.isfinite(x).all()
    task = make_task(cfg)
    if isinstance(task, PerSecondTask):
        assert target.shape == (cfg.data.sequence.seconds,) and target.dtype == torch.long
        assert set(target.tolist()) <= {cfg.data.sequence.ignore_index, *range(len(labels))}
    elif labels is not None:
        assert target.shape == (len(labels),)


def test_urbansound8k_60s_is_the_official_setting():
    """Spec §10 (Urban8K column) and §2 (8 x 384 patches, 3073 tokens), with 60 outputs per sequence."""
    cfg = load_config(RunConfig, RECIPES[0].parent / "urbansound8k_60s.yaml", ["model.init=null"])
    labels = ClassLabels.from_names(f"c{k}" for k in range(10))
    with torch.device("meta"):
        model = build_model(cfg, labels)
    assert model.config.encoder.grid == (8, 384) and 1 + model.config.encoder.num_patches == 3073
    task = make_task(cfg)
    assert isinstance(task, PerSecondTask) and (task.num_segments, task.pooling, task.metric) == (60, "time", "acc")
    assert cfg.data.dataset.features.target_length == 6144 and cfg.data.sequence.layout == "packed"
    assert cfg.data.dataset.mono == "mean"  # prep_urban8k.py averages stereo
    aug, o = cfg.data.dataset.augment, cfg.optim
    assert (aug.freqm, aug.timem, aug.mixup, aug.noise) == (48, 192, 0.0, False)
    assert (o.name, o.lr, o.head_lr_mult, o.weight_decay, o.warmup_steps) == ("adam", 1e-4, 1.0, 5e-7, 0)
    assert (o.scheduler, o.decay_start, o.decay_every, o.decay_rate) == ("multistep", 20, 10, 0.85)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.finetune.loss) == (50, 5, "ce")
    tokens = torch.randn(2, 3073, 4)  # the official pooling: 51 frequency-major tokens per "second" (Q11)
    with torch.no_grad():
        assert model.pool(tokens.to("meta"), "official_1sec", 60).shape == (2, 60, 4)
    assert pool_official_1sec(tokens, 60)[:, 1].allclose(tokens[:, 51:102].mean(1))


def test_cross_validation_protocols_of_the_k_fold_recipes():
    """ESC-50: SSAST's best epoch of the fold-averaged curve; Urban8K: every fold's last epoch (urban_amba.sh);
    IEMOCAP: s3prl's dev split (valid_ratio 0.2) and s3prl's stock lr 1e-4 (run_er.sh never passes its 1e-5)."""
    def load(name: str) -> RunConfig:
        return load_config(RunConfig, RECIPES[0].parent / name, ["model.init=null"])

    esc, urban, urban60, er = (load(n) for n in ("esc50.yaml", "urbansound8k.yaml", "urbansound8k_60s.yaml",
                                                  "iemocap_er.yaml"))
    assert (esc.finetune.cv_pass, esc.data.fold_valid_ratio) == ("best_average", None)
    assert urban.finetune.cv_pass == urban60.finetune.cv_pass == "last"
    assert urban60.data.sequence.layout == "packed" and urban60.data.sequence.pad_label == "last"
    assert (er.data.fold_valid_ratio, er.optim.lr) == (0.2, 1e-4)
    assert load("speechcommands_v1.yaml").train.balanced and not load("speechcommands_v2.yaml").train.balanced
