"""Depthwise causal (or anti-causal) convolution + SiLU of the Mamba mixer as one Triton kernel.

On CUDA the mixer's ``F.conv1d(groups=E)`` runs cuDNN's depthwise kernel and then a separate SiLU over a sliced,
non-contiguous output: on an H200 at 22k tokens the two took ~11 ms of SSAMBA-tiny's 99 ms, several times what
reading and writing the activations costs.  This kernel reads ``x`` once and writes ``silu(conv(x))``.

Layout: ``x`` is ``(B, E, L)`` with time contiguous (the mixer's channels-first activations), weights ``(E, 1, K)``
as ``nn.Conv1d`` stores them.  ``backwards=False`` is the causal conv of the forward direction,
``u_t = silu(b + sum_j w[K-1-j] x[t-j])``; ``backwards=True`` the anti-causal one of the backward direction run on the
unflipped sequence, ``u_t = silu(b + sum_j w[K-1-j] x[t+j])`` (the conv of the time-reversed input, reversed back).
Arithmetic in float32, output in ``x``'s dtype.

The backward recomputes the same function with ``F.conv1d`` under autograd (the gradient of the reference
formulation, so training is exactly as correct as the step-by-step path); only the forward is fused.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ssamba.models.scan import triton_ops
from ssamba.models.scan.triton_ops import tl, triton

BLOCK_E, BLOCK_L = 8, 256


if triton is not None:

    @triton.jit
    def _conv_silu_tile(x_row, w_ptr, b_ptr, out_ptrs, offs_e, offs_t, mask_e, length, K: tl.constexpr,
                        BACKWARDS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_E: tl.constexpr,
                        BLOCK_L: tl.constexpr):
        """One (BLOCK_E, BLOCK_L) tile of ``silu(conv(x))`` from the channels' rows ``x_row`` into ``out_ptrs``."""
        acc = tl.zeros((BLOCK_E, BLOCK_L), dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[:, None]
        for j in tl.static_range(K):  # tap K-1-j meets x[t -+ j]
            if BACKWARDS:
                t = offs_t + j
            else:
                t = offs_t - j
            m = mask_e[:, None] & ((t >= 0) & (t < length))[None, :]
            xj = tl.load(x_row + t[None, :], mask=m, other=0.0).to(tl.float32)
            wj = tl.load(w_ptr + offs_e * K + (K - 1 - j), mask=mask_e, other=0.0).to(tl.float32)
            acc += wj[:, None] * xj
        out = acc * tl.sigmoid(acc)
        tl.store(out_ptrs, out, mask=mask_e[:, None] & (offs_t < length)[None, :])


def conv_silu_kernel(x_ptr, w_ptr, b_ptr, out_ptr, dim, length, s_xb, s_xd, s_ob, s_od,
                     K: tl.constexpr, BACKWARDS: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_E: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    out_ptrs = out_ptr + pid_b * s_ob + offs_e[:, None] * s_od + offs_t[None, :]
    _conv_silu_tile(x_ptr + pid_b * s_xb + offs_e[:, None] * s_xd, w_ptr, b_ptr, out_ptrs, offs_e, offs_t,
                    offs_e < dim, length, K, BACKWARDS, HAS_BIAS, BLOCK_E, BLOCK_L)


def conv_silu_pair_kernel(x_ptr, w_ptr, b_ptr, w2_ptr, b2_ptr, out_ptr, dim, length, s_xb, s_xd, s_ob, s_od,
                          s_o2, K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_L: tl.constexpr):
    """The causal conv with ``w``/``b`` into ``out`` and the anti-causal one with ``w2``/``b2`` into
    ``out + s_o2``, from one read of ``x``: the second tile's loads hit the cache the first one filled."""
    pid_b = tl.program_id(0)
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_e = offs_e < dim
    x_row = x_ptr + pid_b * s_xb + offs_e[:, None] * s_xd
    out_ptrs = out_ptr + pid_b * s_ob + offs_e[:, None] * s_od + offs_t[None, :]
    _conv_silu_tile(x_row, w_ptr, b_ptr, out_ptrs, offs_e, offs_t, mask_e, length, K, False, True, BLOCK_E,
                    BLOCK_L)
    _conv_silu_tile(x_row, w2_ptr, b2_ptr, out_ptrs + s_o2, offs_e, offs_t, mask_e, length, K, True, True,
                    BLOCK_E, BLOCK_L)


@functools.lru_cache(maxsize=None)
def _kernel(pair: bool = False):
    return triton.jit(conv_silu_pair_kernel if pair else conv_silu_kernel)


def conv_silu_reference(x: Tensor, weight: Tensor, bias: Tensor | None, backwards: bool) -> Tensor:
    """The same function as ``F.conv1d`` + SiLU, as the mixer's step-by-step path computes it."""
    pad = weight.shape[-1] - 1
    if backwards:
        pre = F.conv1d(x, weight.flip(-1), bias, padding=pad, groups=x.shape[1])[..., pad:]
    else:
        pre = F.conv1d(x, weight, bias, padding=pad, groups=x.shape[1])[..., :x.shape[-1]]
    return F.silu(pre)


def _conv_silu(x: Tensor, weight: Tensor, bias: Tensor | None, backwards: bool) -> Tensor:
    """The kernel launch, without autograd."""
    batch, dim, length = x.shape
    x_ = x if x.stride(-1) == 1 else x.contiguous()
    w = weight if weight.is_contiguous() else weight.contiguous()  # (E, 1, K): the layout of (E, K)
    out = torch.empty(batch, dim, length, dtype=x.dtype, device=x.device)
    grid = (batch, triton_ops.cdiv(dim, BLOCK_E), triton_ops.cdiv(length, BLOCK_L))
    _kernel()[grid](x_, w, w if bias is None else bias.contiguous(), out, dim, length,
                    x_.stride(0), x_.stride(1), out.stride(0), out.stride(1),
                    K=w.shape[-1], BACKWARDS=bool(backwards), HAS_BIAS=bias is not None,
                    BLOCK_E=BLOCK_E, BLOCK_L=BLOCK_L, num_warps=4, **triton_ops.FP_FUSION)
    return out


class _ConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, backwards):
        out = _conv_silu(x, weight, bias, backwards)
        ctx.save_for_backward(x, weight, bias)
        ctx.backwards = bool(backwards)
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        # float32 recompute (the forward's arithmetic), outside any autocast; gradients in the inputs' dtypes
        leaves = [t.detach().float().requires_grad_(needs) if t is not None else None
                  for t, needs in zip(saved, ctx.needs_input_grad[:3])]
        with torch.enable_grad(), torch.autocast(grad.device.type, enabled=False):
            out = conv_silu_reference(*leaves, ctx.backwards)
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            got = iter(torch.autograd.grad(out, wanted, grad.float()) if wanted else ())
        grads = [next(got).to(s.dtype) if t is not None and t.requires_grad else None for t, s in zip(leaves, saved)]
        return (*grads, None)


def supports(x: Tensor) -> bool:
    """CUDA tensors with Triton (CPU ones only in Triton's interpreter, for the tests)."""
    return triton_ops.supports(x) and x.dim() == 3


def conv_silu(x: Tensor, weight: Tensor, bias: Tensor | None, backwards: bool = False) -> Tensor:
    """``silu(depthwise causal conv)`` of ``(B, E, L)`` activations (anti-causal with ``backwards``) in one pass."""
    if not supports(x):
        raise RuntimeError("the fused conv + SiLU runs CUDA tensors with Triton (CPU ones only in its interpreter)")
    if x.shape[-1] == 0:
        return x.new_empty(x.shape)
    batch, dim, length = x.shape
    parts = triton_ops.batch_slices(batch, max(dim * length, x.stride(0)), f"conv + SiLU of {tuple(x.shape)}")
    # inference calls the launch directly: autograd.Function.apply costs more host time than the launch itself
    conv = _ConvSilu.apply if triton_ops.wants_grad(x, weight, bias) else _conv_silu
    if len(parts) == 1:
        return conv(x, weight, bias, backwards)
    return torch.cat([conv(x[p], weight, bias, backwards) for p in parts])


def conv_silu_pair(x: Tensor, causal: tuple[Tensor, Tensor], anti_causal: tuple[Tensor, Tensor]) -> Tensor:
    """``conv_silu(x, *causal)`` and ``conv_silu(x, *anti_causal, backwards=True)`` stacked, ``(2, B, E, L)``, in
    one launch that reads ``x`` once (inference: the mixer's two directions; weights ``(E, 1, K)`` and biases)."""
    if not supports(x):
        raise RuntimeError("the fused conv + SiLU runs CUDA tensors with Triton (CPU ones only in its interpreter)")
    batch, dim, length = x.shape
    out = torch.empty(2, batch, dim, length, dtype=x.dtype, device=x.device)
    if length == 0:
        return out
    if out.numel() > triton_ops.MAX_OFFSET or x.stride(0) * batch > triton_ops.MAX_OFFSET:
        return torch.stack([conv_silu(x, *causal), conv_silu(x, *anti_causal, backwards=True)])
    x_ = x if x.stride(-1) == 1 else x.contiguous()
    (w, b), (w2, b2) = [(w.contiguous(), b.contiguous()) for w, b in (causal, anti_causal)]
    grid = (batch, triton_ops.cdiv(dim, BLOCK_E), triton_ops.cdiv(length, BLOCK_L))
    _kernel(True)[grid](x_, w, b, w2, b2, out, dim, length, x_.stride(0), x_.stride(1), out.stride(1),
                        out.stride(2), out.stride(0), K=w.shape[-1], BLOCK_E=BLOCK_E, BLOCK_L=BLOCK_L, num_warps=4,
                        **triton_ops.FP_FUSION)
    return out
