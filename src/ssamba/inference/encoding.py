"""Running an encoder on an input of any length, without copying the model.

The encoder's learned position embedding belongs to the patch grid it was trained on.  For another length the
embedding is adapted exactly as the official pretrain -> fine-tune conversion does (centre cut when shorter,
bilinear interpolation when longer, :func:`ssamba.models.patches.adapt_position_embedding`); at the trained length
it is used unchanged, so results equal ``model.encode`` bit for bit.  Adapted embeddings are cached per length.
"""
from __future__ import annotations

import weakref

import torch
from torch import Tensor

from ssamba.models.config import EncoderConfig
from ssamba.models.encoder import PatchEncoder
from ssamba.models.patches import adapt_position_embedding

_POS_CACHE: "weakref.WeakKeyDictionary[PatchEncoder, dict]" = weakref.WeakKeyDictionary()
_POS_CACHE_SIZE = 8


def column_count(config: EncoderConfig, frames: int) -> int:
    """Time columns of the patch grid for ``frames`` input frames."""
    return (frames - config.tshape) // config.tstride + 1


def aligned_frames(config: EncoderConfig, frames: int) -> int:
    """The smallest length >= ``frames`` (and >= one patch) whose frames all lie in a complete patch column, so no
    audio at the end is dropped by the patch convolution."""
    frames = max(int(frames), config.tshape)
    extra = (frames - config.tshape) % config.tstride
    return frames if extra == 0 else frames + config.tstride - extra


def position_embedding(encoder: PatchEncoder, time_columns: int) -> Tensor:
    """The encoder's position embedding adapted to ``time_columns`` (cls positions first), cached per length."""
    if time_columns == encoder.grid[1]:
        return encoder.pos_embed
    param = encoder.pos_embed
    key = (time_columns, param.device, param.dtype, param._version, param.data_ptr())
    cache = _POS_CACHE.setdefault(encoder, {})
    if key not in cache:
        if len(cache) >= _POS_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        with torch.no_grad():
            cache[key] = adapt_position_embedding(param.detach(), encoder.num_cls_tokens, encoder.grid,
                                                  (encoder.grid[0], time_columns))
    return cache[key]


def encode_any_length(encoder: PatchEncoder, x: Tensor, layers: bool = False) -> list[Tensor]:
    """Encode ``(B, frames, mel)`` at its own length: ``[final]`` tokens ``(B, cls + F'*T', D)``, or with ``layers``
    every layer's states followed by the final output (as ``encoder.hidden_states``)."""
    cfg = encoder.config
    if x.dim() != 3 or x.shape[2] != cfg.input_fdim:
        raise ValueError(f"expected (B, frames, {cfg.input_fdim}) features, got shape {tuple(x.shape)}")
    if x.shape[1] < cfg.tshape or (x.shape[1] - cfg.tshape) % cfg.tstride and x.shape[1] != cfg.input_tdim:
        raise ValueError(f"{x.shape[1]} frames do not fill whole patch columns; use aligned_frames() (only the "
                         f"trained length, {cfg.input_tdim}, may leave frames outside every patch)")
    tokens = encoder.tokens(x, pos_embed=position_embedding(encoder, column_count(cfg, x.shape[1])))
    states: list[Tensor] | None = [] if layers else None
    out = encoder.trunk(tokens, collect=states)
    return (states or []) + [out]


def time_columns(tokens: Tensor, num_cls_tokens: int, freq_rows: int) -> Tensor:
    """Patch tokens ``(B, cls + F'*T', D)`` -> one vector per time column ``(B, T', D)`` (mean over frequency)."""
    batch, _, dim = tokens.shape
    return tokens[:, num_cls_tokens:].reshape(batch, freq_rows, -1, dim).mean(dim=1)
