"""Both directions of a bidirectional mixer's scans in one launch, averaged in the kernel (CUDA inference, "serial").

Why.  At batch 2, SSAMBA-tiny's mixer scans 768 (batch, channel) rows per direction: as one-warp programs of the
serial forward that is about 1.5 warps per scheduler of an H200, too few to hide the latency of the state loop's
chains of dependent instructions and of its loads behind other warps.  Launched together, the two directions put
twice the warps in flight.  Each program adds half of its gated output into one zeroed buffer, so the sum of the
two directions (a read of two (B, D, L) float32 tensors and a write of one), the halving after ``out_proj`` and a
launch go too.  The adds are atomic, vectorised like 16-byte stores (``REDG.E.ADD.F32x4`` on sm_90), and still
deterministic: every element receives exactly two halves onto 0, and ``(0 + a) + b`` is one rounding of ``a + b``
in either order, as ``(y_f + y_b) / 2`` rounds it.  The kernel also takes the parameters as they are (``A_log``,
not ``-exp(A_log)``), so that the host runs no op for them.  Not yet timed on a GPU by hand: on CUDA the backend
times it against the two launches of the default shape on a mixer's first call of a shape (``mixer_config``).

Only for inference with the "serial" algorithm (``TritonConfig.algo``) on sequences the mixer has padded to
``ALIGN`` steps, with dt_proj inside the kernel (``delta_proj`` of ``selective_scan_triton``); otherwise the mixer
runs two ``selective_scan_triton`` calls.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ssamba.models.scan import triton_ops
from ssamba.models.scan.triton_ops import ALIGN, _f32, tl, triton

if triton is not None:  # the kernel's body (jitted on first use, so that importing this module needs no Triton)
    from ssamba.models.scan.triton_serial import _scan_channel


class Direction(NamedTuple):
    """One direction's scan inputs, as the mixer has them: ``u`` (B, D, L); ``dt``, ``B``, ``C`` rows of one
    (B, R + 2N, L) projection (so with equal strides); the parameters ``A_log`` (D, N; the kernel takes
    A = -exp(A_log) itself, two host ops fewer per direction), ``D`` and ``delta_bias`` (D,); ``w_dt`` (D, R), dt_proj's
    weight."""

    u: Tensor
    dt: Tensor
    B: Tensor
    C: Tensor
    A_log: Tensor
    D: Tensor
    delta_bias: Tensor
    w_dt: Tensor


def fwd_serial_pair_kernel(
    u_ptr, u2_ptr, A_ptr, A2_ptr, B_ptr, B2_ptr, C_ptr, C2_ptr, D_ptr, D2_ptr, bias_ptr, bias2_ptr,
    dt_ptr, dt2_ptr, w_dt_ptr, w_dt2_ptr, z_ptr, out_ptr, carry_ptr,
    dim, length, valid_length, d_state,
    s_xb, s_xd, s_xl, s_bb, s_bn, s_bl, s_zb, s_carry,
    CHUNK: tl.constexpr, STAGES: tl.constexpr, UNROLL: tl.constexpr, DT_RANK: tl.constexpr,
):
    """Program (b, d, 0) scans channel d of batch element b forward in time with the first parameter set (the
    unsuffixed pointers), program (b, d, 1) backwards with the second (suffix 2); each adds half of its output,
    ``silu(z) (y + D u)``, into ``out``.  Delta is ``W_dt dt`` (softplus of it plus the bias), identity steps from
    ``valid_length`` on; A is ``-exp(A_log)`` of the ``A`` pointers' A_log.  Both directions' ``u`` and ``out`` share
    strides (``s_x*``), ``z`` too but for its batch stride ``s_zb`` (it may be the second half of the in_proj output
    whose first half is the convs' input), and both directions' dt, B and C share theirs (``s_b*``).  ``carry_ptr``:
    ``triton_ops.serial_scratch((2, batch, dim), ...)``, its rows ``s_carry`` apart."""
    pid_b = tl.program_id(0)
    d = tl.program_id(1)
    second = tl.program_id(2)
    x_row = pid_b * s_xb + d * s_xd
    b_row = pid_b * s_bb
    carry_row = carry_ptr + ((second * tl.num_programs(0) + pid_b) * dim + d) * s_carry
    z_at = z_ptr + pid_b * (s_zb - s_xb)  # z read at u's offsets
    if second == 0:
        _scan_channel(u_ptr, u_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_at, bias_ptr, out_ptr, out_ptr, dt_ptr, w_dt_ptr,
                      carry_row, carry_row, x_row, b_row, d, length, valid_length, d_state, s_xl, s_bn, s_bl,
                      True, True, True, True, False, CHUNK, False, STAGES, CHUNK, UNROLL, DT_RANK, True, True)
    else:
        _scan_channel(u2_ptr, u2_ptr, A2_ptr, B2_ptr, C2_ptr, D2_ptr, z_at, bias2_ptr, out_ptr, out_ptr, dt2_ptr,
                      w_dt2_ptr, carry_row, carry_row, x_row, b_row, d, length, valid_length, d_state, s_xl, s_bn,
                      s_bl, True, True, True, True, False, CHUNK, True, STAGES, CHUNK, UNROLL, DT_RANK, True, True)


@functools.lru_cache(maxsize=1)
def _kernel():
    return triton.jit(fwd_serial_pair_kernel)


def mixer_config(x: Tensor, dim: int, rows: int, d_state: int) -> triton_ops.TritonConfig | None:
    """The launch shape of a mixer's inference scans of ``dim`` channels over the sequence of ``x`` (B, ., L),
    padded to ``ALIGN`` steps, with ``rows`` (R + 2N) rows of dt, B and C: a "serial" one runs them as ``scan_pair``,
    another as two ``selective_scan_triton`` calls at that shape; explicit, or the faster of the two ways as tuned
    by ``triton_ops.launch_config``.  None where ``scan_pair`` cannot run them: without Triton, or where its 32-bit
    offsets do not reach every element (``selective_scan_triton`` splits the batch).  ``z`` may have twice the
    channels' batch stride.  For inference only (the caller's check): the pair has no backward."""
    if not triton_ops.supports(x):
        return None
    batch, length = x.shape[0], x.shape[-1]
    reach = batch * max(2 * dim * length, rows * length, 2 * dim * triton_ops.SERIAL_SCRATCH_PER_STATE * d_state)
    if length % ALIGN or length == 0 or reach > triton_ops.MAX_OFFSET:
        return None
    rank = rows - 2 * d_state
    return triton_ops.launch_config(
        triton_ops.ShapeKey.of("pair", x, dim, d_state, rank), x.device,
        lambda: _pair_workload(x.device, x.dtype, triton_ops.tuning_batch(batch, dim, length), dim, d_state, rank,
                               length))


def _pair_workload(device: torch.device, dtype: torch.dtype, batch: int, dim: int, d_state: int, rank: int,
                   length: int) -> Callable[[triton_ops.TritonConfig], object]:
    """``run(config)`` on made-up inputs of a mixer's shape: ``scan_pair`` for a "serial" config, else what the mixer
    runs instead, the two directions' ``selective_scan_triton`` calls and their sum.  What ``mixer_config`` times."""
    made_up = triton_ops.MadeUp(device, dtype)
    randn = made_up.normal

    def side() -> Direction:
        dt, b, c = randn(batch, rank + 2 * d_state, length).split([rank, d_state, d_state], dim=1)
        a_log = torch.log(0.5 + made_up.uniform(dim, d_state))
        return Direction(randn(batch, dim, length), dt, b, c, a_log, torch.ones(dim, device=device),
                         torch.full((dim,), -2.0, device=device), randn(dim, rank, scale=rank ** -0.5))

    sides, z = (side(), side()), randn(batch, dim, length)

    def run(config: triton_ops.TritonConfig) -> Tensor:
        if config.algo == "serial":
            return scan_pair(*sides, z, length, config)
        y = [triton_ops.selective_scan_triton(s.u, None, -torch.exp(s.A_log), s.B, s.C, s.D, z, s.delta_bias, True,
                                              reverse, delta_proj=(s.w_dt, s.dt), config=config)
             for s, reverse in zip(sides, (False, True))]
        return y[0].add_(y[1])
    return run


def scan_pair(forward: Direction, backward: Direction, z: Tensor, valid_length: int,
              config: triton_ops.TritonConfig) -> Tensor:
    """``silu(z) * (y_forward + y_backward) / 2``, (B, D, L) in u's dtype: ``forward`` scanned from the first step
    to the last, ``backward`` from the last to the first, each ``selective_scan(u, W_dt dt, -exp(A_log), B, C, D, z,
    delta_bias, delta_softplus=True)`` with the steps from ``valid_length`` on identity steps (the mixer's padding).
    For the calls ``mixer_config`` gives a "serial" launch shape, ``config``."""
    u = forward.u
    batch, dim, length = u.shape
    d_state, rank = forward.A_log.shape[1], forward.w_dt.shape[1]
    if (length % ALIGN or backward.u.stride() != u.stride() or z.stride()[1:] != u.stride()[1:]
            or z.shape != u.shape or backward.u.shape != u.shape):
        raise ValueError(f"scan_pair: u of both directions and z must share shape and strides (z's batch stride "
                         f"aside), with a length that is a multiple of {ALIGN}; got {tuple(u.shape)} {u.stride()}, "
                         f"{tuple(backward.u.shape)} {backward.u.stride()}, z {tuple(z.shape)} {z.stride()}")
    strides = {t.stride() for side in (forward, backward) for t in (side.dt, side.B, side.C)}
    if len(strides) != 1 or u.stride() != (dim * length, length, 1):
        raise ValueError("scan_pair: dt, B and C of both directions must share strides, and u be contiguous")
    for side in (forward, backward):
        if (side.A_log.shape != (dim, d_state) or side.w_dt.shape != (dim, rank)
                or side.dt.shape != (batch, rank, length)):
            raise ValueError(f"scan_pair: A_log (D, N), W_dt (D, R) and dt (B, R, L) for u {tuple(u.shape)}; got "
                             f"{tuple(side.A_log.shape)}, {tuple(side.w_dt.shape)}, {tuple(side.dt.shape)}")
    if config.algo != "serial":
        raise ValueError(f"scan_pair runs the 'serial' forward, got launch shape {config}")
    chunk = triton_ops._launch_shape(config, batch, dim, length)[1]
    f32 = dict(dtype=torch.float32, device=u.device)
    out = torch.zeros(batch, dim, length, **f32)
    carry = triton_ops.serial_scratch((2, batch, dim), d_state, u.device)
    f = [_f32(t) for t in (forward.A_log, forward.D, forward.delta_bias, forward.w_dt)]
    b = [_f32(t) for t in (backward.A_log, backward.D, backward.delta_bias, backward.w_dt)]
    s_b = forward.B.stride()
    _kernel()[(batch, dim, 2)](
        u, backward.u, f[0], b[0], forward.B, backward.B, forward.C, backward.C, f[1], b[1], f[2], b[2],
        forward.dt, backward.dt, f[3], b[3], z, out, carry,
        dim, length, valid_length, d_state, *u.stride(), *s_b, z.stride(0), carry.stride(-2),
        CHUNK=chunk, STAGES=config.stages, UNROLL=config.states_per_pass(d_state),
        DT_RANK=rank, num_warps=config.num_warps, **triton_ops.FP_FUSION,
    )
    return out if u.dtype == torch.float32 else out.to(u.dtype)
