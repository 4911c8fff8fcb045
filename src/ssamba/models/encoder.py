"""What SSAMBA and SSAST encoders share: patch tokens, cls token(s), learned position embedding, masking, checks.

Subclasses provide ``trunk(tokens) -> tokens`` (the blocks and final norm).  The encoder input is a normalised
log-mel spectrogram ``(B, frames, mel)``; the output is ``(B, num_cls_tokens + F'*T', D)``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ssamba.models.config import EncoderConfig
from ssamba.models.patches import PatchEmbed, adapt_position_embedding


class PatchEncoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.num_cls_tokens = config.num_cls_tokens
        self.patch_embed = PatchEmbed(d, config.fshape, config.tshape, config.fstride, config.tstride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if self.num_cls_tokens == 2:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        elif self.num_cls_tokens != 1:
            raise ValueError(f"num_cls_tokens must be 1 or 2, got {self.num_cls_tokens}")
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_cls_tokens + config.num_patches, d))
        for p in self._cls_params() + [self.pos_embed]:
            nn.init.trunc_normal_(p, std=0.02)

    def _cls_params(self) -> list[nn.Parameter]:
        return [self.cls_token] + ([self.dist_token] if self.num_cls_tokens == 2 else [])

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    def check_input(self, x: Tensor) -> None:
        cfg = self.config
        if x.dim() != 3:
            raise ValueError(f"expected a spectrogram batch (B, frames, mel), got shape {tuple(x.shape)}")
        if x.shape[2] != cfg.input_fdim:
            raise ValueError(f"expected {cfg.input_fdim} mel bins in the last dimension, got {x.shape[2]} "
                             f"(input layout is (B, frames, mel))")
        t_dim = (x.shape[1] - cfg.tshape) // cfg.tstride + 1
        if x.shape[1] < cfg.tshape or t_dim != cfg.grid[1]:
            raise ValueError(
                f"input has {x.shape[1]} frames, but this model was built for {cfg.input_tdim} "
                f"({cfg.grid[1]} time patches); pad/cut the input or adapt the encoder with "
                f"model.encoder.with_input_size(input_tdim={x.shape[1]})"
            )

    def tokens(self, x: Tensor, mask_index: Tensor | None = None, mask_embed: Tensor | None = None,
               pos_embed: Tensor | None = None) -> Tensor:
        """Patch embeddings (masked ones replaced by ``mask_embed``), cls token(s) first, plus position embedding.

        ``pos_embed``: one adapted to another number of time columns (any-length inference); the input is then not
        held to the trained grid."""
        if pos_embed is None:
            self.check_input(x)
        patches = self.patch_embed(x)
        if mask_index is not None:
            if mask_embed is None:
                raise ValueError("mask_index given without mask_embed")
            masked = torch.zeros(patches.shape[:2], dtype=torch.bool, device=patches.device)
            masked.scatter_(1, mask_index, True)
            patches = torch.where(masked.unsqueeze(-1), mask_embed.to(patches.dtype), patches)
        cls = [p.expand(x.shape[0], -1, -1) for p in self._cls_params()]
        return torch.cat(cls + [patches], dim=1) + (self.pos_embed if pos_embed is None else pos_embed)

    def trunk(self, tokens: Tensor, collect: list[Tensor] | None = None) -> Tensor:  # pragma: no cover
        """Blocks and final norm; appends each layer's (pre-norm) output to ``collect`` when given."""
        raise NotImplementedError

    def forward(self, x: Tensor, mask_index: Tensor | None = None, mask_embed: Tensor | None = None) -> Tensor:
        """(B, frames, mel) -> (B, num_cls_tokens + patches, D) after the final norm."""
        return self.trunk(self.tokens(x, mask_index, mask_embed))

    def hidden_states(self, x: Tensor) -> list[Tensor]:
        """Every layer's token states (SSAMBA: after each forward/backward pair; SSAST: after each block), before
        any norm, then the final output: ``depth_units + 1`` tensors of (B, num_cls + patches, D)."""
        states: list[Tensor] = []
        out = self.trunk(self.tokens(x), collect=states)
        return states + [out]

    def with_input_size(self, input_tdim: int | None = None, fstride: int | None = None,
                        tstride: int | None = None, input_fdim: int | None = None) -> "PatchEncoder":
        """A copy for another input size and/or patch stride (the official pretrain -> fine-tune step, spec §8).

        The patch projection keeps its weights (only the stride changes); the position embedding is centre-cut or
        interpolated to the new grid.
        """
        cfg = copy.deepcopy(self.config)
        cfg.input_tdim = input_tdim if input_tdim is not None else cfg.input_tdim
        cfg.input_fdim = input_fdim if input_fdim is not None else cfg.input_fdim
        cfg.fstride = fstride if fstride is not None else cfg.fstride
        cfg.tstride = tstride if tstride is not None else cfg.tstride
        cfg.__post_init__()
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        state["pos_embed"] = adapt_position_embedding(state["pos_embed"], self.num_cls_tokens, self.grid, cfg.grid)
        new = type(self)(cfg)
        new.load_state_dict(state)
        return new.to(self.pos_embed.device).train(self.training)
