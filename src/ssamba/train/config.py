"""The run config: one dataclass tree per run, loaded from a recipe YAML with dotted overrides."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ssamba.config import ConfigError, check_fields
from ssamba.data.dataset import DatasetConfig
from ssamba.data.sequences import SequenceConfig
from ssamba.models.config import EncoderConfig
from ssamba.train.optim import OptimConfig


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # optimiser steps; stops early when reached
    batch_size: int = 8  # per process
    eval_batch_size: int | None = None
    num_workers: int = 0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # cuda: this process's GPU (LOCAL_RANK under torchrun)
    amp: Literal["none", "bf16", "fp16"] = "none"  # fp16 (CUDA only) uses a GradScaler
    log_every: int = 10
    eval_every: int | None = None  # steps; None = at the end of every epoch
    checkpoint_every: int = 200  # steps (and at the end of every epoch)
    halt_after_steps: int | None = None  # testing aid: stop abruptly (as if killed) after this many steps
    progress: bool = True
    #: draw training clips in inverse proportion to their class's size, with replacement (SUPERB's class-balanced
    #: WeightedRandomSampler); one label per clip
    balanced: bool = False

    def __post_init__(self) -> None:
        # refused here, naming the key, before the run writes anything: a 0 would fail steps later as a bare
        # ZeroDivisionError (batch_size, log_every, checkpoint_every) or pass silently (eval_every=0: no validation)
        positive = ("epochs", "batch_size", "log_every", "checkpoint_every", "max_steps", "eval_batch_size",
                    "eval_every", "halt_after_steps")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) is not None and getattr(self, k) < 1]
        if self.num_workers < 0:
            bad.append(f"num_workers={self.num_workers}")
        if bad:
            raise ValueError(f"{', '.join(bad)}: must be >= 1 (num_workers >= 0; eval_every and max_steps may be "
                             "null)")


#: EncoderConfig fields that the run sets from other keys, so ``model.overrides`` may not
SET_ELSEWHERE = {"arch": "model.arch", "size": "model.size", "input_tdim": "data.dataset.features.target_length",
                 "fstride": "model.fstride", "tstride": "model.tstride"}


@dataclass
class ModelSection:
    arch: Literal["ssamba", "ssast"] = "ssamba"
    size: Literal["tiny", "small", "base"] = "tiny"
    #: checkpoint to start from (ours or official); a pretraining checkpoint is converted (spec §8). None: scratch
    init: str | None = None
    fstride: int = 10  # fine-tuning patch stride (pretraining always uses stride = patch size)
    tstride: int = 10
    pooling: Literal["mean", "cls"] = "mean"
    #: any other EncoderConfig field, e.g. depth, drop_path_rate, attention, scan_backend
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # checked with the rest of the config (before the run writes anything), naming the key, and not first when
        # the encoder is built, where a misspelt or mistyped field fails with an unrelated message
        for key in self.overrides if isinstance(self.overrides, dict) else ():
            if key in SET_ELSEWHERE:
                raise ConfigError(f"model.overrides.{key}: set by {SET_ELSEWHERE[key]}, not by model.overrides")
        self.overrides = check_fields(EncoderConfig, self.overrides, "model.overrides.", exclude=SET_ELSEWHERE)


@dataclass
class DataSection:
    train: str | None = None  # manifest (.json SSAST/AST style or .csv path,label[,split])
    valid: str | None = None
    test: str | None = None
    class_labels: str | None = None  # class_labels_indices.csv (fine-tuning)
    #: cross-validation: fold names; manifests are ``{fold_dir}/{fold}_train.json`` and ``{fold}_eval.json``
    folds: list[str] = field(default_factory=list)
    fold_dir: str | None = None
    #: cross-validation with a dev split (s3prl's valid_ratio): this share of each fold's training clips, drawn
    #: at random (seeded by the fold's name), selects the model, and the fold's eval split is its test set; null:
    #: the eval split is validated on (the K-fold recipes of SSAST/SSAMBA)
    fold_valid_ratio: float | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # features + training augmentation
    #: how clips are concatenated into labelled sequences (only read when finetune.task is per_second)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)

    def __post_init__(self) -> None:
        if self.fold_valid_ratio is not None and not 0.0 < self.fold_valid_ratio < 1.0:
            raise ValueError(f"fold_valid_ratio must be in (0, 1) or null, got {self.fold_valid_ratio}")


@dataclass
class PretrainSection:
    mask_size: int = 400  # released checkpoints: 250 / 300 / 400
    eval_mask_size: int = 400  # the official validation always masks 400
    single_pass: bool = False  # share one forward pass between the two objectives (not official)

    def __post_init__(self) -> None:
        if self.mask_size < 1 or self.eval_mask_size < 1:
            raise ValueError(f"mask_size={self.mask_size}, eval_mask_size={self.eval_mask_size}: must be >= 1")


@dataclass
class FinetuneSection:
    loss: Literal["ce", "bce"] = "ce"
    metric: Literal["acc", "mAP"] = "acc"
    #: "clip": one label per clip; "per_second": one label per second of clips concatenated into sequences
    #: (data.sequence), SSAMBA's Urban8K task
    task: Literal["clip", "per_second"] = "clip"
    #: per-second pooling: "time" (time-aligned columns) or "official_1sec" (the official ft_avgtok_1sec, quirk Q11)
    pooling: Literal["time", "official_1sec"] = "time"
    #: which validation pass cross-validation (data.folds) reports: "best_average", the pass where the fold-averaged
    #: curve is best (SSAST's ESC-50 get_esc_result.py), or "last", every fold's last pass (the official Urban8K
    #: scripts: no selection on the fold that is scored)
    cv_pass: Literal["best_average", "last"] = "best_average"

    def __post_init__(self) -> None:
        if self.cv_pass not in ("best_average", "last"):
            raise ValueError(f"cv_pass must be 'best_average' or 'last', got {self.cv_pass!r}")
        if self.task == "per_second" and self.loss != "ce":
            raise ValueError(f"task=per_second trains with CE over the labelled seconds; loss={self.loss!r} is not "
                             "supported")


@dataclass
class ProbeSection:
    """Linear probing of a frozen encoder on pooled embeddings of every layer."""

    layers: Literal["last", "all"] = "all"
    epochs: int = 100
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not 0 < self.lr < math.inf:
            raise ValueError(f"epochs={self.epochs}, batch_size={self.batch_size}: must be >= 1; "
                             f"lr={self.lr}: must be a positive number")


@dataclass
class RunConfig:
    task: Literal["pretrain", "finetune", "probe"] = "finetune"
    out_dir: str = "runs/run"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    probe: ProbeSection = field(default_factory=ProbeSection)
