"""``ssamba.load``: one entry point for our saved models and for official SSAMBA/SSAST ``.pth`` checkpoints."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from ssamba.hub import is_hub_ref, resolve, verify_sha256
from ssamba.models.base import AudioModel, load_state_strict
from ssamba.models.checkpoint import (
    CONFIG_NAME, WEIGHTS_NAME, CheckpointError, Geometry, config_from_official, convert_official_state,
    load_pretrained_files, read_official, strip_module_prefix,
)
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig
from ssamba.pretrain.model import MaskedPatchModel

logger = logging.getLogger(__name__)

MODEL_CLASSES: dict[str, type[AudioModel]] = {"pretrain": MaskedPatchModel, "classify": AudioClassifier}
_GEOMETRY = ("input_tdim", "fstride", "tstride", "input_fdim")


def load(path: str | Path, *, sha256: str | None = None, label_dim: int | None = None,
         input_tdim: int | None = None, fstride: int | None = None, tstride: int | None = None,
         input_fdim: int | None = None, labels: list[str] | None = None,
         pooling: Literal["mean", "cls"] | None = None) -> AudioModel:
    """Load a model from a directory written by ``save_pretrained`` or from an official ``.pth`` file.

    For a pretraining checkpoint, passing ``label_dim`` (and optionally ``input_tdim``, ``fstride``, ``tstride``,
    ``input_fdim``, ``labels``, ``pooling``) returns the fine-tuning model built exactly as the official conversion
    (spec §8); without them the pretraining model is returned.  For an official fine-tuning checkpoint,
    ``input_tdim``/``fstride``/``tstride`` declare its geometry (a state dict does not store the stride; it is
    inferred when not given).  The model is returned in eval mode.

    ``path`` may be ``hf://OWNER/REPO/FILE`` (downloaded into the Hugging Face cache, see
    :mod:`ssamba.hub`); ``sha256`` pins the checkpoint file.  The returned model also has ``predict`` and
    ``embed`` (:mod:`ssamba.inference.mixin`).
    """
    given = dict(label_dim=label_dim, input_tdim=input_tdim, fstride=fstride, tstride=tstride, input_fdim=input_fdim,
                 labels=labels, pooling=pooling)
    options = {k: v for k, v in given.items() if v is not None}
    if is_hub_ref(path):
        path = resolve(str(path), sha256)
    else:
        path = Path(path)
        if sha256 is not None and path.exists():
            verify_sha256(path / WEIGHTS_NAME if path.is_dir() else path, sha256)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: directory has no {CONFIG_NAME}; not a saved ssamba model")
        if set(options) & set(_GEOMETRY) and not _is_pretrain_dir(path):
            raise TypeError(f"{path}: a saved fine-tuning model already fixes its input size and stride")
        model = _load_ours(path)
    elif path.is_file():
        model = _load_official(path, options)
    else:
        raise CheckpointError(f"{path}: no such file or directory")

    if isinstance(model, MaskedPatchModel):
        if "label_dim" in options:
            model = model.to_classifier(**options)
        elif options:
            raise TypeError(f"{path}: is a pretraining checkpoint; pass label_dim to build a fine-tuning model")
    else:
        extra = set(options) - set(_GEOMETRY) - {"labels", "pooling"}
        if extra:
            raise TypeError(f"{path}: is already a fine-tuning model; {sorted(extra)} do not apply")
        for key in ("labels", "pooling"):
            if key in options:
                setattr(model.config, key, options[key])
        model.config.__post_init__()  # validates the label count
    return model.eval()


def _is_pretrain_dir(path: Path) -> bool:
    config_dict, _ = load_pretrained_files(path, weights=False)
    return config_dict.get("task") == "pretrain"


def _load_ours(path: Path) -> AudioModel:
    config_dict, state = load_pretrained_files(path)
    config = ModelConfig.from_dict(config_dict)
    model = MODEL_CLASSES[config.task](config)
    load_state_strict(model, state, source=str(path))
    return model


def _load_official(path: Path, options: dict) -> AudioModel:
    state = strip_module_prefix(read_official(path))
    is_pretrain = "mask_embed" in state
    geometry = Geometry(**{k: options[k] for k in _GEOMETRY if k in options and not is_pretrain})
    config = config_from_official(state, geometry, source=str(path))
    model = MODEL_CLASSES[config.task](config)
    load_state_strict(model, convert_official_state(state, source=str(path)), source=str(path))
    logger.info("loaded official %s-%s %s checkpoint %s", config.encoder.arch, config.encoder.size,
                config.task, path)
    return model
