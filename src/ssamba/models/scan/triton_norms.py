"""The residual adds and LayerNorms between SSAMBA block pairs in one Triton pass (CUDA inference).

Why.  Between two block pairs the eager encoder runs three elementwise adds over the (B, L, D) stream (the pair's
outputs, the doubled residual, their sum) and two LayerNorms of the same sum (each block of the next pair has its
own weights).  On an H200 at 22k tokens that was ~4 ms of SSAMBA-tiny's 99 ms: PyTorch's LayerNorm took 79 us a
call on 192 channels, each add ~31 us.  This kernel reads ``prev``, ``h1`` and ``h2`` once and writes the sum and
both norms once (about 45 us a pair at the H200's bandwidth; not yet timed on a GPU).  ``ops.add_norms`` is its
CPU twin, with the same signature and the same sums bit for bit.

The same kernel runs on CPU tensors in Triton's interpreter, which is how the tests check it.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ssamba.models.scan import triton_ops
from ssamba.models.scan.triton_ops import tl, triton

#: Elements a program normalises: whole rows (the channels, padded to a power of two), as many as fit.
_BLOCK_ELEMENTS = 4096


if triton is not None:

    @triton.jit
    def _rounded(x, dtype: tl.constexpr):
        """float32 ``x`` in ``dtype``, rounded to nearest even as ``Tensor.to`` rounds.  bfloat16 by hand on the
        bits (the upper half, plus a carry from the lower half past its midpoint or at it when the upper half is
        odd; NaN stays NaN): Triton's interpreter truncates, or with "rtne" rounds ties of negative values away
        from even, where the GPU rounds as torch does."""
        if dtype == tl.float32:
            return x
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            up = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            up = tl.where(x != x, (bits | 0x400000) >> 16, up)
            return up.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return x.to(dtype)

    @triton.jit
    def _store_norm(x, w_ptr, b_ptr, out_ptrs, offs_d, mask_d, mask):
        """The normalised rows ``x`` times the weight plus the bias, stored in the output's dtype."""
        w = tl.load(w_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        tl.store(out_ptrs, _rounded(x * w[None, :] + b[None, :], out_ptrs.dtype.element_ty), mask=mask)


def add_norms_kernel(prev_ptr, h1_ptr, h2_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, r_ptr, out_ptr, rows, dim,
                     out_stride, eps, HAS_PREV: tl.constexpr, HAS_H2: tl.constexpr, NORMS: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """``r = (prev + prev) + (h1 + h2)`` for BLOCK_R rows of ``dim`` channels, then the LayerNorms of ``r`` with
    weights and biases ``w0``/``b0`` (and ``w1``/``b1`` when NORMS is 2) into ``out`` (NORMS, rows, dim;
    ``out_stride`` = rows x dim, an argument so that Triton types it 64-bit when it has to be).  The adds in the
    encoder's order, so ``r`` equals the eager stream bit for bit; the statistics in float32 over the row held in
    registers."""
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    mask = (offs_r < rows)[:, None] & mask_d[None, :]
    off = offs_r[:, None] * dim + offs_d[None, :]
    h = tl.load(h1_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_H2:  # the pair's outputs summed in their dtype (rounded to it), as the eager stream adds them
        h = _rounded(h + tl.load(h2_ptr + off, mask=mask, other=0.0).to(tl.float32), h1_ptr.dtype.element_ty)
        h = h.to(tl.float32)
    r = h
    if HAS_PREV:
        p = tl.load(prev_ptr + off, mask=mask, other=0.0).to(tl.float32)
        r = (p + p) + h
    tl.store(r_ptr + off, r, mask=mask)
    mean = tl.sum(r, axis=1) / dim
    centred = tl.where(mask, r - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / dim + eps)
    x = centred * rstd[:, None]
    _store_norm(x, w0_ptr, b0_ptr, out_ptr + off, offs_d, mask_d, mask)
    if NORMS == 2:
        _store_norm(x, w1_ptr, b1_ptr, out_ptr + out_stride + off, offs_d, mask_d, mask)


@functools.lru_cache(maxsize=None)
def _kernel():
    return triton.jit(add_norms_kernel)


def _affine(norm: nn.LayerNorm, dim: int, f32: dict) -> tuple[Tensor, Tensor]:
    """A LayerNorm's weight and bias (ones and zeros for a norm without them)."""
    return (torch.ones(dim, **f32) if norm.weight is None else norm.weight.contiguous(),
            torch.zeros(dim, **f32) if norm.bias is None else norm.bias.contiguous())


def add_norms(prev: Tensor | None, h1: Tensor, h2: Tensor | None, norms: list[nn.LayerNorm],
              out_dtype: torch.dtype | None = None) -> tuple[Tensor, list[Tensor]]:
    """``ops.add_norms`` on the GPU: ``r = (prev + prev) + (h1 + h2)`` (prev, h2 optional) and each LayerNorm of
    ``r``, in one pass; returns ``(r, [norm(r) for norm in norms])``, r float32, the norms float32 or
    ``out_dtype``.  For inference (no autograd graph)."""
    if (len(norms) not in (1, 2) or len({n.eps for n in norms}) != 1
            or any(tuple(n.normalized_shape) != h1.shape[-1:] for n in norms)):
        raise ValueError(f"add_norms needs one or two LayerNorms over the last dimension ({h1.shape[-1]}) with one "
                         f"eps, got {[(tuple(n.normalized_shape), n.eps) for n in norms]}")
    for name, t in (("prev", prev), ("h2", h2)):
        if t is not None and t.shape != h1.shape:
            raise ValueError(f"add_norms: {name} has shape {tuple(t.shape)}, h1 {tuple(h1.shape)}")
    if h2 is not None and h2.dtype != h1.dtype:
        raise ValueError(f"add_norms: h2 is {h2.dtype}, h1 {h1.dtype} (the pair's outputs are summed in their dtype)")
    if prev is not None and prev.dtype != torch.float32:
        raise ValueError(f"add_norms: prev must be float32 (the residual stream), got {prev.dtype}")
    dim = h1.shape[-1]
    rows = h1.numel() // dim if dim else 0
    f32 = dict(dtype=torch.float32, device=h1.device)
    r = torch.empty(h1.shape, **f32)
    out = torch.empty((len(norms), *h1.shape), dtype=out_dtype or torch.float32, device=h1.device)
    if rows == 0:
        return r, list(out.unbind(0))
    # the parameters themselves (no stacking, no conversion: no ops to dispatch); one norm passes its own twice
    w0, b0 = _affine(norms[0], dim, f32)
    w1, b1 = _affine(norms[-1], dim, f32)
    block_d = triton_ops.next_power_of_2(dim)
    block_r = max(1, _BLOCK_ELEMENTS // block_d)
    h1 = h1.contiguous()
    _kernel()[(triton_ops.cdiv(rows, block_r),)](
        h1 if prev is None else prev.contiguous(), h1, h1 if h2 is None else h2.contiguous(), w0, b0, w1, b1, r, out,
        rows, dim, rows * dim, float(norms[0].eps), HAS_PREV=prev is not None, HAS_H2=h2 is not None, NORMS=len(norms),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4, **triton_ops.FP_FUSION,
    )
    return r, list(out.unbind(0))
