"""Behaviour every ssamba model shares: an encoder built from its config, ``encode``, and our checkpoint format."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

from torch import Tensor, nn

from ssamba.models import build_encoder
from ssamba.models.checkpoint import load_pretrained_files, save_pretrained_files
from ssamba.models.config import ModelConfig

M = TypeVar("M", bound="AudioModel")


class AudioModel(nn.Module):
    """Base class. Subclasses set ``task`` ("pretrain" or "classify") and add their heads."""

    task: ClassVar[str]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.task != self.task:
            raise ValueError(f"{type(self).__name__} needs a config with task={self.task!r}, got {config.task!r}")
        self.config = config
        self.encoder = build_encoder(config.encoder)

    @property
    def num_cls_tokens(self) -> int:
        return self.encoder.num_cls_tokens

    def encode(self, x: Tensor) -> Tensor:
        """(B, frames, mel) -> encoder output (B, num_cls + patches, D) after the final norm."""
        return self.encoder(x)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``; the scan backend
        is left out, so that a model trained on a GPU backend runs wherever it is loaded."""
        config = self.config.to_dict()
        config["encoder"]["scan_backend"] = None  # this machine's choice (mamba_ssm, triton), not the model's
        return save_pretrained_files(directory, config, self.state_dict())

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path) -> M:
        config_dict, state = load_pretrained_files(directory)
        model = cls(ModelConfig.from_dict(config_dict))
        load_state_strict(model, state, source=str(directory))
        return model.eval()


def load_state_strict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict`` that names every missing/unexpected/mis-shaped key (never the official strict=False)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_abbrev(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_abbrev(shapes)}")
        raise ValueError(f"{source}: checkpoint does not match the model; " + "; ".join(parts))
    model.load_state_dict(state)


def _abbrev(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
