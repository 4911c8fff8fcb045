"""Autograd and fake (meta) registrations of the C++ operators, and the Python entry points that call them.

The operators (``torch.ops.ssamba_cpu.*``, defined in ``csrc/ops.cpp``) work on channels-last tensors
(batch, length, channels), the layout the mixer's matmuls produce, so the fused mixer path needs no transposes.
Registering autograd through ``torch.library`` (rather than an ``autograd.Function`` around the call) and a fake
implementation keeps the ops opaque but traceable under ``torch.compile``.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor

CHUNK = 32  # kChunk in csrc/args.h: scan steps between the states saved for backward

def activation_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The kernels read activations as float32 or bfloat16 (all the same): bf16 only when every one is bf16."""
    present = [t for t in tensors if t is not None]
    return torch.bfloat16 if all(t.dtype == torch.bfloat16 for t in present) else torch.float32


def _cl(t: Tensor, dtype: torch.dtype) -> Tensor:
    """(batch, channels, length) -> contiguous (batch, length, channels) of the kernels' activation dtype."""
    return t.transpose(1, 2).to(dtype).contiguous()


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _below_autograd(needs_grad: bool) -> contextlib.AbstractContextManager:
    """Call an op past its autograd kernel when no gradient is wanted: torch.library's Python autograd wrapper
    costs ~17 us per scan call and ~7 us per conv call, ~2% of a short clip's forward.  Not under torch.compile,
    which traces the op through its registered autograd."""
    if needs_grad or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch._C._AutoDispatchBelowAutograd()


def scan(u: list[Tensor], delta: list[Tensor], A: list[Tensor], B: list[Tensor], C: list[Tensor],
         D: list[Tensor | None], delta_bias: list[Tensor | None], z: Tensor | None, softplus: bool) -> Tensor:
    """Selective scan on channels-last tensors, one entry per direction (the second runs backwards in time);
    returns ``silu(z) * sum_dir y_dir / n_dirs`` as float32 (batch, length, channels).  The activations (u, delta,
    B, C, z) are all float32 or all bfloat16; A, D and delta_bias are float32; the arithmetic is float32."""
    save = _needs_grad(*u, *delta, *A, *B, *C, *D, *delta_bias, z)
    with _below_autograd(save):
        out, _ = torch.ops.ssamba_cpu.scan_fwd(u, delta, A, B, C, D, delta_bias, z, softplus, save)
    return out


def conv_silu_bidir(x: Tensor, w_f: Tensor, b_f: Tensor, w_b: Tensor, b_b: Tensor) -> tuple[Tensor, Tensor]:
    """Causal (w_f) and anti-causal (w_b) depthwise conv + SiLU of channels-last x (float32 or bfloat16; the
    outputs have its dtype); float32 weights (channels, width)."""
    with _below_autograd(_needs_grad(x, w_f, b_f, w_b, b_b)):
        return torch.ops.ssamba_cpu.conv_silu_fwd(x, w_f, b_f, w_b, b_b)


def mixer(hidden: Tensor, w_in: Tensor, conv_w: list[Tensor], conv_b: list[Tensor], x_proj_w: list[Tensor],
          dt_proj_w: list[Tensor], dt_bias: list[Tensor], A_log: list[Tensor], D: list[Tensor], w_out: Tensor,
          cast_weights: bool = False) -> Tensor:
    """A whole bidirectional mixer's forward in one call, for inference only (no autograd): in_proj, conv + SiLU,
    x_proj, dt_proj, -exp(A_log), both scans with the gate and average, out_proj.  Lists are per direction, the
    set scanning forward in time first, as the module holds them (conv weights (E, 1, K)).  hidden is float32 or
    bfloat16; the matmul weights must have its dtype unless ``cast_weights`` (autocast: cast them as it would);
    the other parameters are used in float32."""
    with _below_autograd(False):
        return torch.ops.ssamba_cpu.mixer_fwd(hidden, w_in, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log,
                                              D, w_out, cast_weights)


def mixer_pair(hidden: tuple[Tensor, Tensor], params: tuple[tuple, tuple], cast_weights: bool = False
               ) -> list[Tensor]:
    """Two mixers' inference forward side by side on up to two threads (the two blocks of an SSAMBA pair): each of
    ``params`` is one mixer's arguments in ``mixer``'s order after ``hidden``.  Returns both outputs, the same bit
    for bit as two ``mixer`` calls."""
    first, second = params
    merged = [[a, b] if isinstance(a, Tensor) else [*a, *b] for a, b in zip(first, second)]
    with _below_autograd(False):
        return torch.ops.ssamba_cpu.mixer_pair_fwd(list(hidden), *merged, cast_weights)


def add_norms(prev: Tensor | None, h1: Tensor, h2: Tensor | None, norms: list[torch.nn.LayerNorm],
              out_dtype: torch.dtype | None = None) -> tuple[Tensor, list[Tensor]]:
    """Between SSAMBA block pairs, for inference: ``r = (prev + prev) + (h1 + h2)`` (prev, h2 optional) and each
    LayerNorm of r, in one pass; returns ``(r, [norm(r) for norm in norms])``.  r is float32; the norms are float32
    or ``out_dtype`` (bfloat16: rounded as ``Tensor.to`` rounds, for matmuls that would cast them anyway)."""
    with _below_autograd(False):
        return torch.ops.ssamba_cpu.add_norms(prev, h1, h2, [n.weight for n in norms], [n.bias for n in norms],
                                              norms[0].eps, out_dtype)


def selective_scan_cpu(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None,
                       delta_softplus: bool = False) -> Tensor:
    """The "cpu" backend of ``selective_scan`` (mamba_ssm layout in and out, computed in float32)."""
    vec = lambda t: None if t is None else t.to(torch.float32).contiguous()  # noqa: E731
    act = activation_dtype(u, delta, B, C, z)
    y = scan([_cl(u, act)], [_cl(delta, act)], [A.to(torch.float32).contiguous()], [_cl(B, act)], [_cl(C, act)],
             [vec(D)], [vec(delta_bias)], None if z is None else _cl(z, act), delta_softplus)
    return y.transpose(1, 2).to(u.dtype)


# ----------------------------------------------------------------------------------------------- registrations
def _scan_fwd_fake(u, delta, A, B, C, D, delta_bias, z, softplus, save):
    batch, length, dim = u[0].shape
    nstate = A[0].shape[-1]
    chunks = (length + CHUNK - 1) // CHUNK
    f32 = dict(dtype=torch.float32)
    ckpt = [u[0].new_empty(batch, chunks, nstate, dim, **f32) if save else u[0].new_empty(0, **f32) for _ in u]
    return u[0].new_empty(batch, length, dim, **f32), ckpt


def _scan_bwd_fake(grad_out, u, delta, A, B, C, D, delta_bias, z, softplus, ckpt):
    batch, length, dim = u[0].shape
    nstate = A[0].shape[-1]
    like = A[0]  # float32: the gradients of A, B, C, D and delta_bias
    act = dict(dtype=u[0].dtype)  # those of u, delta and z: the activations' dtype
    per_dir = [
        [like.new_empty(batch, length, dim, **act) for _ in u],
        [like.new_empty(batch, length, dim, **act) for _ in u],
        [like.new_empty(dim, nstate) for _ in u],
        [like.new_empty(batch, length, nstate) for _ in u],
        [like.new_empty(batch, length, nstate) for _ in u],
        [like.new_empty(dim) for _ in u],
        [like.new_empty(dim) for _ in u],
    ]
    gz = like.new_empty(batch, length, dim, **act) if z is not None else like.new_empty(0, **act)
    return [t for group in per_dir for t in group] + [gz]


def _mixer_fwd_fake(hidden, w_in, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, w_out, cast_weights):
    return hidden.new_empty(hidden.shape)


def _mixer_pair_fwd_fake(hidden, w_in, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D, w_out, cast_weights):
    return [h.new_empty(h.shape) for h in hidden]


def _add_norms_fake(prev, h1, h2, weight, bias, eps, out_dtype=None):
    norm_dtype = torch.float32 if out_dtype is None else out_dtype
    return h1.new_empty(h1.shape, dtype=torch.float32), [h1.new_empty(h1.shape, dtype=norm_dtype) for _ in weight]


def _scan_setup(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, delta_bias, z, softplus, save = inputs
    n = len(u)
    ctx.n, ctx.softplus = n, softplus
    ctx.has_D = [t is not None for t in D]
    ctx.has_bias = [t is not None for t in delta_bias]
    ctx.has_z = z is not None
    ctx.save_for_backward(*u, *delta, *A, *B, *C, *D, *delta_bias, z, *output[1])
    # the checkpoints are outputs only to be saved: no zero gradients for them (a (B, L/32, N, E) fill per call)
    ctx.set_materialize_grads(False)


def _scan_backward(ctx, grad_out, _grad_ckpt):
    if grad_out is None:  # nothing downstream used the output
        return (None,) * 10
    n = ctx.n
    saved = list(ctx.saved_tensors)
    u, delta, A, B, C, D, bias = (saved[i * n:(i + 1) * n] for i in range(7))
    z, ckpt = saved[7 * n], saved[7 * n + 1:]
    grads = torch.ops.ssamba_cpu.scan_bwd(grad_out, u, delta, A, B, C, D, bias, z, ctx.softplus, ckpt)
    gu, gdelta, gA, gB, gC, gD, gbias = (grads[i * n:(i + 1) * n] for i in range(7))
    gD = _optional_grads(gD, ctx.has_D)
    gbias = _optional_grads(gbias, ctx.has_bias)
    gz = grads[7 * n] if ctx.has_z else None
    return gu, gdelta, gA, gB, gC, gD, gbias, gz, None, None


def _optional_grads(grads: list[Tensor], present: list[bool]) -> list[Tensor | None] | None:
    """Gradients of a ``Tensor?[]`` argument: None where the input was None (a list of only Nones is one None)."""
    if not any(present):
        return None
    return [g if has else None for g, has in zip(grads, present)]


def _conv_fwd_fake(x, w_f, b_f, w_b, b_b):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _conv_bwd_fake(g_f, g_b, x, w_f, b_f, w_b, b_b):
    return [x.new_empty(x.shape), w_f.new_empty(w_f.shape), b_f.new_empty(b_f.shape),
            w_b.new_empty(w_b.shape), b_b.new_empty(b_b.shape)]


def _conv_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _conv_backward(ctx, g_f, g_b):
    x = ctx.saved_tensors[0]
    g_f = torch.zeros_like(x) if g_f is None else g_f
    g_b = torch.zeros_like(x) if g_b is None else g_b
    gx, gw_f, gb_f, gw_b, gb_b = torch.ops.ssamba_cpu.conv_silu_bwd(g_f, g_b, *ctx.saved_tensors)
    return gx, gw_f, gb_f, gw_b, gb_b


@functools.lru_cache(maxsize=None)
def register() -> None:
    """Attach fake and autograd implementations to the loaded operators (once; cpu.py calls this after loading)."""
    lib = "ssamba_cpu::"
    torch.library.register_fake(lib + "scan_fwd", _scan_fwd_fake)
    torch.library.register_fake(lib + "scan_bwd", _scan_bwd_fake)
    torch.library.register_fake(lib + "conv_silu_fwd", _conv_fwd_fake)
    torch.library.register_fake(lib + "conv_silu_bwd", _conv_bwd_fake)
    torch.library.register_fake(lib + "mixer_fwd", _mixer_fwd_fake)
    torch.library.register_fake(lib + "mixer_pair_fwd", _mixer_pair_fwd_fake)
    torch.library.register_fake(lib + "add_norms", _add_norms_fake)
    torch.library.register_autograd(lib + "scan_fwd", _scan_backward, setup_context=_scan_setup)
    torch.library.register_autograd(lib + "conv_silu_fwd", _conv_backward, setup_context=_conv_setup)
