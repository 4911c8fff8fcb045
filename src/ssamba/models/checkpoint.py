"""Checkpoint files: our format (``config.json`` + ``model.safetensors``) and import of official ``.pth`` files.

Official state dicts (SSAMBA ``AMBAModel`` and SSAST ``ASTModel``, spec §12) are translated by a fixed prefix table;
everything about the architecture (SSAMBA or SSAST, size, depth, norm, stage, pretraining input size) is inferred
from the keys and shapes, and anything that cannot be represented is an error naming the keys involved.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ssamba.atomic import atomic_write
from ssamba.models.config import EMBED_DIMS, SSAST_HEADS, EncoderConfig, ModelConfig, grid_size

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, or does not describe a model we can build."""


# ---------------------------------------------------------------------------------------------------------------
# our format


def save_pretrained_files(directory: str | Path, config: dict[str, Any], state: dict[str, Tensor]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    payload = {"ssamba_format": FORMAT_VERSION, **config}
    atomic_write(directory / CONFIG_NAME,
                  lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8"))
    return directory


def load_pretrained_files(directory: str | Path, weights: bool = True) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read ``config.json`` and (unless ``weights=False``) ``model.safetensors`` of a saved model directory."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (a saved model directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    version = config.pop("ssamba_format", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: unsupported ssamba_format {version!r} (expected {FORMAT_VERSION})")
    _check_model_config(config, config_path)
    backend = config["encoder"].get("scan_backend")
    if backend is not None:  # written by an older version: a GPU backend would fail every forward on a CPU
        logger.warning("%s: saved with scan_backend=%r, the choice of the machine that saved it; not kept (here the "
                       "automatic choice, set_backend or $SSAMBA_SCAN_BACKEND decide)", config_path, backend)
        config["encoder"]["scan_backend"] = None
    if not weights:
        return config, {}
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path}: unreadable or truncated safetensors file ({exc})") from exc
    return config, state


def _check_model_config(config: dict[str, Any], config_path: Path) -> None:
    """A hand-edited or damaged config fails here, naming its file, not later as a confusing shape mismatch."""
    missing = [key for key in ("encoder", "task") if key not in config]
    if missing:
        raise CheckpointError(f"{config_path}: lacks {', '.join(map(repr, missing))} (every saved model records them)")
    try:
        ModelConfig.from_dict(copy.deepcopy(config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid model config: {exc}") from exc


# ---------------------------------------------------------------------------------------------------------------
# official checkpoints


def read_official(path: str | Path) -> dict[str, Tensor]:
    """Load an official ``.pth`` state dict safely (``weights_only=True``), with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if zipfile.is_zipfile(path):  # a whole archive whose pickle holds more than tensors
            raise CheckpointError(
                f"{path}: holds Python objects besides tensors, which a safe load refuses. If it is a training "
                "checkpoint of `ssamba pretrain/finetune` (checkpoints/last.pt: optimiser and RNG states), it is "
                "read by --resume; as a model, load the run's best/ or final/ folder. "
                f"({str(exc).splitlines()[-1].strip()})") from exc
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint (corrupt or truncated?): {exc}") from exc
    except Exception as exc:  # torch raises RuntimeError/OSError/EOFError/... for damaged files
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint (corrupt or truncated?): {exc}") from exc
    for wrapper in ("state_dict", "model"):  # training checkpoints sometimes nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    return dict(obj)


#: official key prefix -> ours (after stripping DataParallel's "module.")
_PREFIXES = [("v.", "encoder."), ("mlp_head.", "head."), ("cpredlayer.", "mpc_head."),
             ("gpredlayer.", "mpg_head."), ("mask_embed", "mask_embed")]
#: official keys with no counterpart: VisionMamba/DeiT ImageNet heads that the official code never calls,
#: and the pretraining input size, which goes into our config
DROPPED_OFFICIAL_KEYS = {"v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias",
                         "p_input_fdim", "p_input_tdim"}


def official_key_to_ours(key: str) -> str | None:
    """Our parameter name for an official state-dict key (``module.`` optional), or None if it is dropped."""
    key = key.removeprefix("module.")
    if key in DROPPED_OFFICIAL_KEYS:
        return None
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    raise CheckpointError(f"unexpected key {key!r}: not part of an official SSAMBA or SSAST model")


def ours_to_official_key(key: str) -> str:
    for old, new in _PREFIXES:
        if key.startswith(new):
            return "module." + old + key[len(new):]
    raise KeyError(key)


@dataclass
class Geometry:
    """Input size and patch stride of a fine-tuning checkpoint: the stride is not stored in a state dict."""

    input_tdim: int | None = None
    fstride: int | None = None
    tstride: int | None = None
    input_fdim: int = 128

    def __post_init__(self) -> None:
        for name in ("input_tdim", "fstride", "tstride", "input_fdim"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def config_from_official(state: dict[str, Tensor], geometry: Geometry | None = None,
                         source: str = "checkpoint") -> ModelConfig:
    """Infer the architecture of an official state dict (keys without ``module.``)."""
    geometry = geometry or Geometry()
    keys = set(state)
    if "v.cls_token" not in keys or "v.patch_embed.proj.weight" not in keys:
        raise CheckpointError(f"{source}: no v.cls_token / v.patch_embed: not an official SSAMBA or SSAST model")
    proj = state["v.patch_embed.proj.weight"]
    dim, fshape, tshape = proj.shape[0], proj.shape[2], proj.shape[3]
    size = {v: k for k, v in EMBED_DIMS.items()}.get(dim, "custom")
    is_mamba = any(k.startswith("v.layers.") for k in keys)
    is_vit = any(k.startswith("v.blocks.") for k in keys)
    if is_mamba == is_vit:
        raise CheckpointError(f"{source}: expected either v.layers.* (SSAMBA) or v.blocks.* (SSAST)")
    prefix = "v.layers." if is_mamba else "v.blocks."
    indices = {int(re.match(r"\d+", k[len(prefix):]).group()) for k in keys if k.startswith(prefix)}
    depth = 1 + max(indices)
    gaps = sorted(set(range(depth)) - indices)
    if gaps:
        raise CheckpointError(f"{source}: {prefix}{gaps[0]}.* missing ({len(gaps)} of the {depth} blocks): the file "
                              "is incomplete or edited")
    num_cls = 2 if "v.dist_token" in keys else 1
    stage = "pretrain" if "mask_embed" in keys else "classify" if "mlp_head.1.weight" in keys else None
    if stage is None:
        raise CheckpointError(f"{source}: neither pretraining (mask_embed) nor fine-tuning (mlp_head) keys found")

    enc: dict[str, Any] = dict(arch="ssamba" if is_mamba else "ssast", size=size, embed_dim=dim, depth=depth,
                               fshape=fshape, tshape=tshape, num_cls_tokens=num_cls)
    need = [f"v.layers.0.mixer.{k}" for k in ("A_log", "x_proj.weight", "conv1d.weight")] if is_mamba else \
        ["v.blocks.0.mlp.fc1.weight"]
    need += ["v.pos_embed"] + (["p_input_fdim", "p_input_tdim"] if stage == "pretrain" else [])
    absent = [k for k in need if k not in keys]
    if absent:
        raise CheckpointError(f"{source}: no {', '.join(absent)}: not a complete official SSAMBA or SSAST model")

    if is_mamba:
        if "v.layers.0.mixer.A_b_log" not in keys:
            raise CheckpointError(f"{source}: no A_b_log: only bidirectional 'bimamba v2' SSAMBA models are "
                                  "supported (this looks like a unidirectional or bimamba v1 model)")
        norm_bias = [k for k in keys if re.fullmatch(r"v\.layers\.\d+\.norm\.bias|v\.norm_f\.bias", k)]
        if norm_bias and len(norm_bias) != depth + 1:
            raise CheckpointError(f"{source}: some norms have biases and some do not: neither LayerNorm nor RMSNorm")
        enc["norm"] = "layernorm" if norm_bias else "rmsnorm"
        x_proj = state["v.layers.0.mixer.x_proj.weight"]
        d_inner, d_state = state["v.layers.0.mixer.A_log"].shape
        dt_rank = x_proj.shape[0] - 2 * d_state
        enc.update(expand=d_inner // dim, d_state=d_state, d_conv=state["v.layers.0.mixer.conv1d.weight"].shape[-1],
                   dt_rank=None if dt_rank == math.ceil(dim / 16) else dt_rank)
    else:
        heads = SSAST_HEADS.get(size)
        if heads is None:
            raise CheckpointError(f"{source}: SSAST embed dim {dim} is not tiny/small/base; head count unknown")
        enc.update(num_heads=heads, norm_eps=1e-6, drop_path_rate=0.0, final_norm_twice=False,
                   mlp_ratio=state["v.blocks.0.mlp.fc1.weight"].shape[0] / dim)

    num_patches = state["v.pos_embed"].shape[1] - num_cls
    if stage == "pretrain":
        fdim, tdim = int(state["p_input_fdim"]), int(state["p_input_tdim"])
        enc.update(input_fdim=fdim, input_tdim=tdim, fstride=fshape, tstride=tshape)
    else:
        enc.update(_finetune_geometry(num_patches, fshape, tshape, geometry, source))
    try:
        config = EncoderConfig(**enc)
    except ValueError as exc:  # e.g. an odd SSAMBA depth: a file missing its last block
        raise CheckpointError(f"{source}: {exc} ({prefix}0..{depth - 1} found)") from exc
    if config.num_patches != num_patches:
        raise CheckpointError(f"{source}: position embedding holds {num_patches} patches but the inferred input "
                              f"{config.input_fdim}x{config.input_tdim} with stride {config.fstride}x{config.tstride} "
                              f"gives {config.num_patches}; pass input_tdim/fstride/tstride explicitly")
    label_dim = state["mlp_head.1.weight"].shape[0] if stage == "classify" else 0
    return ModelConfig(encoder=config, task=stage, label_dim=label_dim)


def _finetune_geometry(num_patches: int, fshape: int, tshape: int, g: Geometry, source: str) -> dict[str, int]:
    """Choose input length and stride for a fine-tuning checkpoint: given values win; otherwise the official
    fine-tuning stride 10 when the frequency rows divide the patch count, else the non-overlapping stride.

    A state dict holds the patch count only, and it can fit both (an ESC-50 model's 600 patches are 12 x 50 at
    stride 10 on 512 frames and 8 x 75 at stride 16 on 1200); the guess is then said as a warning naming the other
    reading, as it is where the time stride cannot be read at all (one frequency row: frame-based patches)."""
    candidates = [g.fstride] if g.fstride is not None else list(dict.fromkeys([10, fshape]))
    fits = []
    for fstride in candidates:
        f_dim = (g.input_fdim - fshape) // fstride + 1
        if num_patches % f_dim:
            continue
        t_dim = num_patches // f_dim
        tstride = g.tstride if g.tstride is not None else fstride
        tdim = g.input_tdim if g.input_tdim is not None else (t_dim - 1) * tstride + tshape
        if grid_size(g.input_fdim, tdim, fshape, tshape, fstride, tstride) == (f_dim, t_dim):
            fits.append(dict(input_fdim=g.input_fdim, input_tdim=tdim, fstride=fstride, tstride=tstride))
    if fits:
        chosen = fits[0]
        said = (f"{source}: inferred fine-tuning geometry {chosen['input_fdim']}x{chosen['input_tdim']} input, "
                f"stride {chosen['fstride']}x{chosen['tstride']}")
        guessed_time = g.tstride is None and g.input_tdim is None
        if fshape == g.input_fdim and guessed_time:
            logger.warning("%s; with frame-based patches (one frequency row) the time stride cannot be read from "
                           "the checkpoint: pass tstride (and input_tdim) if it was not %d", said, chosen["tstride"])
        elif len(fits) > 1 and guessed_time:
            other = fits[1]
            logger.warning("%s; its %d patches also fit a %dx%d input at stride %dx%d: if that is the model, pass "
                           "fstride/tstride (and input_tdim)", said, num_patches, other["input_fdim"],
                           other["input_tdim"], other["fstride"], other["tstride"])
        elif g.fstride is None or g.input_tdim is None:
            logger.info("%s", said)
        return chosen
    given = {k: v for k, v in (("input_tdim", g.input_tdim), ("fstride", g.fstride), ("tstride", g.tstride))
             if v is not None}
    if len(given) == 3:
        raise CheckpointError(f"{source}: its position embedding holds {num_patches} patches, which the given "
                              f"{g.input_fdim}x{g.input_tdim} input with stride {g.fstride}x{g.tstride} does not give "
                              f"(patch {fshape}x{tshape})")
    raise CheckpointError(f"{source}: cannot infer the input size/stride of a fine-tuning checkpoint with "
                          f"{num_patches} patches" + (f" from {given}" if given else "")
                          + "; pass input_tdim, fstride and tstride")


def convert_official_state(state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename official keys (``module.`` already stripped) to ours, dropping the unused ones."""
    out = {}
    for key, value in state.items():
        try:
            new = official_key_to_ours(key)
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        if new is not None:
            out[new] = value
    return out


def export_official_state(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our state dict in the official layout (``module.`` prefix, DataParallel style), loadable by the official code.

    The official models also carry an ImageNet head that they never call (``v.head``, and ``v.head_dist`` for
    DeiT-based SSAST); it is written as zeros so that strict loading works there.
    """
    out = {ours_to_official_key(k): v.detach().cpu() for k, v in state.items()}
    enc = config.encoder
    if config.task == "pretrain":
        out["module.p_input_fdim"] = torch.tensor(enc.input_fdim)
        out["module.p_input_tdim"] = torch.tensor(enc.input_tdim)
    heads = ["v.head"] + (["v.head_dist"] if enc.num_cls_tokens == 2 else [])
    for head in heads:
        out[f"module.{head}.weight"] = torch.zeros(1000, enc.embed_dim)
        out[f"module.{head}.bias"] = torch.zeros(1000)
    return out


def strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}
