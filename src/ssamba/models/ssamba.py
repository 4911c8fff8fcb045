"""The SSAMBA encoder: spectrogram patches -> 24 bidirectional Mamba blocks, exactly as the official code (spec §2-4).

Read top to bottom: a block is "residual add, norm, mixer"; blocks run in pairs, the second of a pair on the
time-reversed sequence; the pair's outputs and residuals are summed (so the residual doubles every pair, quirk
Q3); a final drop path, then the final norm applied twice (quirk Q2).  These quirks are kept because the released
weights were trained with them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ssamba.models.config import EncoderConfig
from ssamba.models.encoder import PatchEncoder
from ssamba.models.layers import DropPath, linspace, make_norm
from ssamba.models.mamba import BiMambaMixer, has_forward_hooks, pair_input_dtype, run_pair
from ssamba.models.scan import get_backend, triton_norms, triton_ops

#: ``ops.add_norms`` / ``triton_norms.add_norms``: (prev, h1, h2, norms, out dtype) -> (sum, norms of the sum)
AddNorms = Callable[[Tensor | None, Tensor, Tensor | None, list, torch.dtype | None], tuple[Tensor, list[Tensor]]]


class MambaBlock(nn.Module):
    """Vim's ``Block`` without fused add-norm: ``r = r + drop_path(h); h = mixer(norm(r))``."""

    def __init__(self, config: EncoderConfig, drop_path: float) -> None:
        super().__init__()
        self.mixer = BiMambaMixer(config.embed_dim, config.d_state, config.d_conv, config.expand, config.dt_rank,
                                  scan_backend=config.scan_backend)
        self.norm = make_norm(config.norm, config.embed_dim, config.norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: Tensor, residual: Tensor | None, reverse: bool = False) -> tuple[Tensor, Tensor]:
        """``reverse=True``: the block applied to the time-reversed sequence, result reversed back."""
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        return self.mixer(self.norm(residual), reverse=reverse), residual


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Vim's schedule: layer i gets ``([0] + linspace(0, rate, depth))[i]`` (shifted by one, spec §4)."""
    return ([0.0] + linspace(0.0, rate, depth))[:depth]


class SSAMBAEncoder(PatchEncoder):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        rates = drop_path_rates(config.drop_path_rate, config.depth)
        self.layers = nn.ModuleList(MambaBlock(config, r) for r in rates)
        self.drop_path = DropPath(config.drop_path_rate)  # the final one is not scheduled (quirk Q4)
        self.norm_f = make_norm(config.norm, config.embed_dim, config.norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        """Vim's ``_init_weights`` (spec §9): zero Linear biases except dt_proj's, rescale ``out_proj``."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
        for layer in self.layers:
            weight = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            with torch.no_grad():
                weight /= math.sqrt(self.config.depth)

    def residual_stream(self, tokens: Tensor, collect: list[Tensor] | None = None) -> Tensor:
        """The pre-norm residual after all pairs and the final drop path.

        ``collect`` receives, after each pair, the stream the next pair adds up (``residual + hidden``).
        """
        hidden, residual = tokens, None
        for fwd, bwd in zip(self.layers[0::2], self.layers[1::2]):
            if (not torch.is_grad_enabled() and fwd.drop_path.identity and bwd.drop_path.identity
                    and not has_forward_hooks(fwd) and not has_forward_hooks(bwd)):
                # inference: both blocks add the same residual, so form it once and let the pair's inputs go
                # (three sequence-sized tensors fewer alive during the mixers; the same numbers bit for bit)
                r = hidden if residual is None else residual + hidden
                hidden = residual = None
                h_f, h_b = run_pair(fwd.mixer, fwd.norm(r), bwd.mixer, bwd.norm(r))
                hidden = h_f + h_b
                del h_f, h_b
                residual = r + r
                del r
                if collect is not None:
                    collect.append(residual + hidden)
                continue
            h_f, r_f = fwd(hidden, residual)
            # bwd sees the flipped sequence; norm, drop path and residual add are per token, so the flip is
            # the mixer's business (free on the fused CPU path)
            h_b, r_b = bwd(hidden, residual, reverse=True)
            hidden, residual = h_f + h_b, r_f + r_b
            if collect is not None:
                collect.append(residual + hidden)
        return residual + self.drop_path(hidden)

    def trunk(self, tokens: Tensor, collect: list[Tensor] | None = None) -> Tensor:
        add_norms = self._fused_add_norms(tokens)
        if add_norms is not None:
            out = self._trunk_fused_inference(tokens, collect, add_norms)
        else:
            out = self.norm_f(self.residual_stream(tokens, collect))
        return self.norm_f(out) if self.config.final_norm_twice else out

    def _fused_add_norms(self, tokens: Tensor) -> AddNorms | None:
        """The op that can run each pair's residual adds and norms in one pass, if one can: for inference (no
        gradient, no drop path) with LayerNorms, float32, and no forward hook on a block or norm (the fused pass
        would skip it: a feature extractor's or an ablation's hook must see the same calls as in training mode;
        hooked mixers are handled by run_pair).  The C++ op (``ops.add_norms``) on the "cpu" scan backend, also
        under bf16 autocast; the Triton one (``triton_norms.add_norms``) on CUDA, and on CPU in Triton's
        interpreter for the "triton" backend (tests).  Not for the "reference" backend: the literal spec path."""
        if torch.is_grad_enabled() or self.training or self.config.norm != "layernorm":
            return None
        if tokens.dtype != torch.float32 or self.norm_f.weight.dtype != torch.float32:
            return None
        modules = [self.norm_f, *self.layers, *(layer.norm for layer in self.layers)]
        if any(has_forward_hooks(m) for m in modules):
            return None
        backend = get_backend(tokens, self.config.scan_backend).name
        if backend == "cpu":
            if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") != torch.bfloat16:
                return None  # fp16 autocast: the norms' C++ op reads float32 or bf16 only
            from ssamba.models.scan import ops

            return ops.add_norms
        if backend != "reference" and (tokens.is_cuda or backend == "triton") and triton_ops.supports(tokens):
            return triton_norms.add_norms
        return None

    def _trunk_fused_inference(self, tokens: Tensor, collect: list[Tensor] | None, add_norms: AddNorms) -> Tensor:
        """``norm_f(residual_stream(tokens))`` with each pair's residual adds and norms in one pass (``add_norms``):
        the adds in residual_stream's order (the same sums of the same pair outputs), the norms equal to float
        rounding (written in bf16 under CPU bf16 autocast, which the mixers would cast them to)."""
        prev, h1, h2 = None, tokens, None
        for i, (fwd, bwd) in enumerate(zip(self.layers[0::2], self.layers[1::2])):
            norm_dtype = pair_input_dtype(fwd.mixer, bwd.mixer, tokens.device)
            r, (n_f, n_b) = add_norms(prev, h1, h2, [fwd.norm, bwd.norm], norm_dtype)
            if collect is not None and i > 0:
                collect.append(r)  # the previous pair's residual + hidden
            prev, h1, h2 = r, None, None  # let the pair's inputs go
            h1, h2 = run_pair(fwd.mixer, n_f, bwd.mixer, n_b)
            del n_f, n_b
        r, (out,) = add_norms(prev, h1, h2, [self.norm_f])
        if collect is not None:
            collect.append(r)
        return out
