"""Builds what a run needs from its config: class labels, datasets, the model and the task."""
from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import numpy as np
import torch

from ssamba.audio.augment import AugmentConfig
from ssamba.data.dataset import AudioDataset
from ssamba.data.manifest import ClassLabels, read_class_labels, read_manifest
from ssamba.data.sequences import FRAMES_PER_SECOND, SequenceDataset
from ssamba.loading import load
from ssamba.models.base import AudioModel
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset
from ssamba.pretrain.model import MaskedPatchModel
from ssamba.train.config import RunConfig
from ssamba.train.engine import TrainingError
from ssamba.train.per_second import PerSecondTask
from ssamba.train.tasks import ClassificationTask, PretrainTask

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_data_files(cfg: RunConfig) -> None:
    """Every data file the config names exists, said by its key before anything is built or written: a recipe's
    default path (``data/pretrain/valid.json``) once failed as a bare FileNotFoundError naming no key."""
    data = cfg.data
    named = {f"data.{key}": getattr(data, key) for key in ("train", "valid", "test", "class_labels")}
    for fold in data.folds if data.fold_dir is not None else ():
        for part in ("train", "eval"):
            named[f"data.folds ({fold} {part}, in data.fold_dir)"] = str(Path(data.fold_dir) / f"{fold}_{part}.json")
    absent = [f"{key}: {path} not found" for key, path in named.items()
              if path is not None and not Path(path).is_file()]
    if absent:
        raise TrainingError("; ".join(absent) + " (give the file, or key=null for an optional split)")


def class_labels(cfg: RunConfig) -> ClassLabels:
    if cfg.data.class_labels is None:
        raise TrainingError("data.class_labels (a class_labels_indices.csv) is required for fine-tuning")
    return read_class_labels(cfg.data.class_labels)


def check_classes(model: AudioClassifier, labels: ClassLabels, source: str) -> None:
    """A classifier's output ``i`` means its ``i``-th class: the data's class list must have the same classes in
    the same order, or every prediction is scored against the wrong label without any other sign. The names are
    compared where the model's config stores them (ours do; official checkpoints do not)."""
    if model.config.label_dim != len(labels):
        raise TrainingError(f"{source} has {model.config.label_dim} outputs, the data {len(labels)} classes")
    saved = model.config.labels
    if saved is None or list(saved) == list(labels.names):
        return
    index = next(i for i, (a, b) in enumerate(zip(saved, labels.names)) if a != b)
    what = "the same classes in another order" if sorted(saved) == sorted(labels.names) else "other classes"
    raise TrainingError(f"{source} was trained on {what} than data.class_labels: output {index} is "
                        f"{saved[index]!r} for the model but {labels.names[index]!r} in the class list; use the "
                        "class_labels_indices.csv the model was trained with")


def per_second(cfg: RunConfig) -> bool:
    return cfg.task == "finetune" and cfg.finetune.task == "per_second"


#: where a run lists the training files it could not read (``DatasetConfig.bad_files_log``)
BAD_FILES_LOG = "bad_files.tsv"


def make_dataset(manifest: str, labels: ClassLabels | None, cfg: RunConfig, train: bool) -> AudioDataset:
    """Training sets get the recipe's augmentation (and sequence jitter); evaluation sets the same features and
    sequences without them. The per-second task reads sequences of concatenated clips."""
    if train:  # augmentation draws follow train.seed too; bad files are counted run-wide, in the run's folder
        seed = int(np.random.SeedSequence([cfg.data.dataset.seed, cfg.train.seed]).generate_state(1)[0] >> 1)
        config = dataclasses.replace(cfg.data.dataset, seed=seed,
                                     bad_files_log=str(Path(cfg.out_dir) / BAD_FILES_LOG))
    else:  # evaluation: no augmentation, and a bad file is an error rather than another clip in the metric
        config = dataclasses.replace(cfg.data.dataset, augment=AugmentConfig(), on_bad="raise")
    if per_second(cfg):
        sequence = cfg.data.sequence if train else dataclasses.replace(cfg.data.sequence, jitter=False)
        return SequenceDataset(read_manifest(manifest), labels, config, sequence)
    return AudioDataset(read_manifest(manifest), labels, config)


def build_model(cfg: RunConfig, labels: ClassLabels | None) -> AudioModel:
    """The run's model, carrying the input normalisation it is trained with (``ModelConfig.norm_stats``), so that
    predict and embed use it by default."""
    model = _build_model(cfg, labels)
    features = cfg.data.dataset.features
    model.config.norm_stats = [float(features.mean), float(features.std)] if features.normalize else None
    return model


def _build_model(cfg: RunConfig, labels: ClassLabels | None) -> AudioModel:
    m, frames = cfg.model, cfg.data.dataset.features.target_length
    if m.init is not None and m.overrides:
        logger.warning("model.overrides %s apply to models built from scratch; %s keeps its architecture",
                       m.overrides, m.init)
    if cfg.task == "pretrain":
        if m.init is not None:
            model = load(m.init)
            if not isinstance(model, MaskedPatchModel):
                raise TrainingError(f"{m.init}: pretraining continues from a pretraining checkpoint only")
            return model
        # pretraining patches do not overlap (stride = patch size), as officially
        enc = preset(m.arch, m.size, input_tdim=frames, **m.overrides)
        enc.fstride, enc.tstride = enc.fshape, enc.tshape
        return MaskedPatchModel(ModelConfig(encoder=enc))
    assert labels is not None
    names = list(labels.names)
    if m.init is not None:
        model = load(m.init)
        if isinstance(model, MaskedPatchModel):
            return model.to_classifier(len(labels), input_tdim=frames, fstride=m.fstride, tstride=m.tstride,
                                       labels=names, pooling=m.pooling)
        if not isinstance(model, AudioClassifier):
            raise TrainingError(f"{m.init}: neither a pretraining checkpoint nor a classifier")
        check_classes(model, labels, m.init)
        return model
    logger.warning("model.init is null: training %s-%s from random initialisation (give model.init=... to fine-tune "
                   "a pretrained model)", m.arch, m.size)
    enc = preset(m.arch, m.size, input_tdim=frames, fstride=m.fstride, tstride=m.tstride, **m.overrides)
    return AudioClassifier(ModelConfig(encoder=enc, task="classify", label_dim=len(labels), labels=names,
                                       pooling=m.pooling))


def make_task(cfg: RunConfig) -> PretrainTask | ClassificationTask | PerSecondTask:
    if cfg.task == "pretrain":
        p = cfg.pretrain
        return PretrainTask(mask_size=p.mask_size, eval_mask_size=p.eval_mask_size, single_pass=p.single_pass)
    if per_second(cfg):
        seq, frames = cfg.data.sequence, cfg.data.dataset.features.target_length
        if frames < seq.seconds * FRAMES_PER_SECOND:
            raise TrainingError(f"data.dataset.features.target_length={frames} frames cannot hold the "
                                f"data.sequence.seconds={seq.seconds} labelled seconds "
                                f"({seq.seconds * FRAMES_PER_SECOND} frames)")
        return PerSecondTask(num_segments=seq.seconds, pooling=cfg.finetune.pooling, metric=cfg.finetune.metric,
                             ignore_index=seq.ignore_index)
    return ClassificationTask(loss=cfg.finetune.loss, metric=cfg.finetune.metric)
