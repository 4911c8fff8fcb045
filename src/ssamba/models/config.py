"""Architecture configs: plain dataclasses that fully describe an encoder, serialised into ``config.json``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Arch = Literal["ssamba", "ssast"]

#: embed dim per size preset (both architectures)
EMBED_DIMS = {"tiny": 192, "small": 384, "base": 768}
#: SSAST attention heads per size (DeiT tiny/small/base)
SSAST_HEADS = {"tiny": 3, "small": 6, "base": 12}


#: EncoderConfig fields that must be positive integers (a stride of 0 or a depth of "two" fails here, by name)
_POSITIVE_INTS = ("embed_dim", "depth", "input_fdim", "input_tdim", "fshape", "tshape", "fstride", "tstride",
                  "d_state", "d_conv", "expand", "num_heads")


@dataclass
class EncoderConfig:
    """Everything needed to build an SSAMBA or SSAST encoder.

    Defaults are the official SSAMBA pretraining configuration (spec §1): 128 mel x 1024 frames, 16x16 patches with
    stride 16, 24 bidirectional Mamba blocks, LayerNorm, drop path 0.1, the final norm applied twice.
    """

    arch: Arch = "ssamba"
    size: str = "tiny"
    embed_dim: int = 192
    depth: int = 24
    input_fdim: int = 128  # mel bins
    input_tdim: int = 1024  # frames
    fshape: int = 16
    tshape: int = 16
    fstride: int = 16
    tstride: int = 16
    drop_path_rate: float = 0.1
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    # SSAMBA (Mamba mixer)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None -> ceil(embed_dim / 16)
    final_norm_twice: bool = True  # official quirk Q2; the released weights were trained with it
    scan_backend: str | None = None  # selective-scan backend; None: $SSAMBA_SCAN_BACKEND, else automatic
    # SSAST (ViT)
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_cls_tokens: int = 1  # SSAST tiny/small/base use 2 (cls + DeiT distillation token)
    attention: Literal["sdpa", "naive"] = "sdpa"

    def __post_init__(self) -> None:
        if self.arch not in ("ssamba", "ssast"):
            raise ValueError(f"arch must be 'ssamba' or 'ssast', got {self.arch!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.attention not in ("sdpa", "naive"):
            raise ValueError(f"attention must be 'sdpa' or 'naive', got {self.attention!r}")
        for name in _POSITIVE_INTS + (("dt_rank",) if self.dt_rank is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("norm_eps", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if isinstance(self.drop_path_rate, bool) or not isinstance(self.drop_path_rate, (int, float)) \
                or not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be a number in [0, 1), got {self.drop_path_rate!r}")
        if self.arch == "ssamba" and self.depth % 2:  # the one place this rule lives (encoder, import, bench)
            raise ValueError(f"SSAMBA runs its blocks in forward/backward pairs: depth must be even, got {self.depth}")
        if self.num_cls_tokens not in (1, 2):
            raise ValueError(f"num_cls_tokens must be 1 (cls) or 2 (cls + distillation), got {self.num_cls_tokens!r}")
        if self.input_fdim < self.fshape or self.input_tdim < self.tshape:
            raise ValueError(
                f"input {self.input_fdim}x{self.input_tdim} is smaller than one {self.fshape}x{self.tshape} patch"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (frequency, time) for the configured input size."""
        return grid_size(self.input_fdim, self.input_tdim, self.fshape, self.tshape, self.fstride, self.tstride)

    @property
    def num_patches(self) -> int:
        f, t = self.grid
        return f * t

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown encoder config keys: {sorted(unknown)}")
        return cls(**data)


def grid_size(fdim: int, tdim: int, fshape: int, tshape: int, fstride: int, tstride: int) -> tuple[int, int]:
    """Output size of the patch convolution (no padding)."""
    return (fdim - fshape) // fstride + 1, (tdim - tshape) // tstride + 1


def preset(arch: Arch = "ssamba", size: str = "tiny", **overrides: Any) -> EncoderConfig:
    """Official architecture for a size preset (tiny/small/base); keyword overrides change any field."""
    if size not in EMBED_DIMS:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(EMBED_DIMS)}")
    if arch == "ssamba":
        base: dict[str, Any] = dict(arch="ssamba", size=size, embed_dim=EMBED_DIMS[size], depth=24)
    elif arch == "ssast":
        # DeiT-distilled ViTs as SSAST builds them: depth 12, LayerNorm eps 1e-6, no drop path, 2 cls tokens.
        base = dict(
            arch="ssast", size=size, embed_dim=EMBED_DIMS[size], depth=12, num_heads=SSAST_HEADS[size],
            num_cls_tokens=2, norm_eps=1e-6, drop_path_rate=0.0, final_norm_twice=False,
        )
    else:
        raise ValueError(f"arch must be 'ssamba' or 'ssast', got {arch!r}")
    base.update(overrides)
    return EncoderConfig(**base)


@dataclass
class ModelConfig:
    """An encoder plus its task: masked-patch pretraining, or classification with ``label_dim`` outputs."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    task: Literal["pretrain", "classify"] = "pretrain"
    label_dim: int = 0
    pooling: Literal["mean", "cls"] = "mean"
    labels: list[str] | None = None  # display names of the classes, when known
    #: the input normalisation (mean, std) the model was trained with; predict/embed use it unless told otherwise
    norm_stats: list[float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig.from_dict(self.encoder)
        if not isinstance(self.encoder, EncoderConfig):
            raise ValueError(f"encoder must be an encoder config (a mapping), got {self.encoder!r}")
        if self.norm_stats is not None:
            self.norm_stats = [float(v) for v in self.norm_stats]
            if len(self.norm_stats) != 2 or not self.norm_stats[1] > 0:
                raise ValueError(f"norm_stats must be [mean, std] with std > 0, got {self.norm_stats}")
        if self.task not in ("pretrain", "classify"):
            raise ValueError(f"task must be 'pretrain' or 'classify', got {self.task!r}")
        if self.task == "classify" and self.label_dim <= 0:
            raise ValueError("a classification model needs label_dim > 0")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.labels is not None and len(self.labels) != self.label_dim:
            raise ValueError(f"{len(self.labels)} label names for label_dim={self.label_dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)
