"""The "serial" forward of the triton scan: every thread scans 16 consecutive steps in registers.

Why.  In the "loop" kernels a (channels, chunk) tile is scanned with ``tl.associative_scan``, whose cost per step is
set by how many consecutive steps a thread holds: Triton lays loaded float32 tiles out 4 per thread (one 16-byte
vector), so every scan does its 5 levels of warp shuffles, and a pass through shared memory across warps, for every
4 steps, whatever the chunk length (longer chunks only repeat the pattern).  Compiled for sm_90 its state loop is 43
machine instructions per state update, 5.3 of them shuffles (46 and 9.3 reversed); on an H200 the "loop" forward
ran at ~10x the memory-bandwidth floor.  This kernel's loop is 11-13 per update on 1-4 warps (10.6 with
``UNROLL`` 2 on one warp), 0.6 of them shuffles, in either direction (``benchmarks/triton_ptx.py`` reads both off
the cubin); not yet timed on a GPU.

How.  A chunk of ``CHUNK = 16 * ROWS`` steps is held as four (ROWS, 4) tiles; tile ``k`` has the steps
``16 r + 4 k + j`` of row ``r``, so one thread owns row ``r``'s 16 consecutive steps as four 16-byte vectors (every
load and store stays vectorised; ``_steps`` names its 16 columns in scan order, register renaming only).  For each
state ``n`` (``_state``), with ``a_t = exp(delta_t A_n)`` and ``b_t = delta_t u_t B_t``:

1. each thread composes its row's map ``h -> ra h + rb``: ``rb`` by 15 multiply-adds along the steps, ``ra`` as
   ``exp(A_n sum(delta))`` (one exponential instead of 15 multiplications);
2. one scan across the rows, one value per thread, gives each row's start state.  It is an exclusive scan, made
   from ``tl.associative_scan`` by scanning (inclusive, exclusive) pairs (``_combine_excl``);
3. each thread walks its 16 steps from its row's start state, ``h = a_t h + b_t``, and ``y`` accumulates ``C_t h``
   in registers; the last row's end state is the next chunk's start.  It goes through memory (a store by the
   thread holding that row, a uniform load per state in the next chunk, one barrier per chunk between them),
   where a reduction across lanes to take it and a second one to pick state ``n`` out of a register vector (5
   shuffles each) cost 14-17 instructions per state.

So the cross-lane work is one scan per 16 steps instead of per 4.  A reverse scan reads memory in ascending order
like the loop kernels (``REVERSE``): thread ``r`` takes the row ``ROWS - 1 - r`` and the tiles and steps of a row
run last to first, so the scan across rows is still a forward one (a reversed ``tl.associative_scan`` compiles to
more shuffles).

``UNROLL`` 2 scans two states per pass of the state loop: two independent chains of dependent instructions (the
multiply-adds along a row, the shuffle levels of the scan) that the compiler interleaves.  SSAMBA-tiny's scans are
768 programs of one warp at B=2 on 132 SMs, about 1.5 warps per scheduler: too few to hide latency by switching
warps.

Rows past the end of the sequence (the last chunk's) read the last real row again instead of masked zeros: they
come after every real step in scan order, so they cannot change an output, and their stores are masked.

Only the forward: training runs the "loop" backward at its own launch shape (``triton_ops.SERIAL_BACKWARD``), from
the states this kernel saves (``SAVE_STATES``) every ``SAVE_EVERY`` steps of the scan, the start of each of the
backward's chunks (a row start: the state entering the row), and the pre-gate output (``ypre``) when there is a
``z`` gate.  One channel per program (``block_d`` 1): the row axis is what fills the warps.  The program's body is
``_scan_channel``, which ``triton_pair`` runs for both directions of a mixer in one launch.
"""
from __future__ import annotations

from ssamba.models.scan.triton_ops import _delta, tl, triton


@triton.jit
def _combine_excl(ia_l, ib_l, ea_l, eb_l, ia_r, ib_r, ea_r, eb_r):
    """Scan of (inclusive, exclusive) affine maps: a segment's inclusive map is all of it, its exclusive map all of it
    but its last step.  Joining segments L then R: inclusive L then R; exclusive L then R's exclusive.  A single
    step starts as (its map, the identity)."""
    return ia_l * ia_r, ia_r * ib_l + ib_r, ia_l * ea_r, ea_r * ib_l + eb_r


@triton.jit
def _columns(x):
    """The 4 columns of a (ROWS, 4) tile whose rows are in-thread: register renaming, no data movement."""
    even, odd = tl.split(tl.reshape(x, (x.shape[0], 2, 2)))
    c0, c2 = tl.split(even)
    c1, c3 = tl.split(odd)
    return c0, c1, c2, c3


@triton.jit
def _tile(c0, c1, c2, c3):
    """``_columns``' inverse."""
    return tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (c0.shape[0], 4))


@triton.jit
def _steps(x0, x1, x2, x3, REVERSE: tl.constexpr):
    """A row's 16 steps, held as the four (ROWS, 4) tiles x0..x3, as 16 (ROWS,) columns in scan order (tile k holds
    the k-th 4 steps of the scan, in memory order: last to first when REVERSE)."""
    s0, s1, s2, s3 = _columns(x0)
    s4, s5, s6, s7 = _columns(x1)
    s8, s9, s10, s11 = _columns(x2)
    s12, s13, s14, s15 = _columns(x3)
    if REVERSE:
        return s3, s2, s1, s0, s7, s6, s5, s4, s11, s10, s9, s8, s15, s14, s13, s12
    return s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15


@triton.jit
def _tiles(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, REVERSE: tl.constexpr):
    """``_steps``' inverse."""
    if REVERSE:
        return (_tile(s3, s2, s1, s0), _tile(s7, s6, s5, s4), _tile(s11, s10, s9, s8),
                _tile(s15, s14, s13, s12))
    return _tile(s0, s1, s2, s3), _tile(s4, s5, s6, s7), _tile(s8, s9, s10, s11), _tile(s12, s13, s14, s15)


@triton.jit
def _state(n, a_row, B_ptr, C_ptr, bc0, bc1, bc2, bc3, s_bn, d_state, dl0, dl1, dl2, dl3, dlu0, dlu1, dlu2, dlu3,
           row_dl, h0, ones, zeros, r, carry_next, state_row, save_at, length,
           ROWS: tl.constexpr, REVERSE: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_EVERY: tl.constexpr):
    """State ``n`` over one chunk: its ``C h`` at every step, as four (ROWS, 4) tiles to add to ``y``.  Stores the
    state after the chunk at ``carry_next + n`` (from the thread holding the chunk's last row), and with
    SAVE_STATES the row starts the backward needs."""
    bn = n * s_bn
    B0 = tl.load(B_ptr + bc0 + bn).to(tl.float32)
    B1 = tl.load(B_ptr + bc1 + bn).to(tl.float32)
    B2 = tl.load(B_ptr + bc2 + bn).to(tl.float32)
    B3 = tl.load(B_ptr + bc3 + bn).to(tl.float32)
    C0 = tl.load(C_ptr + bc0 + bn).to(tl.float32)
    C1 = tl.load(C_ptr + bc1 + bn).to(tl.float32)
    C2 = tl.load(C_ptr + bc2 + bn).to(tl.float32)
    C3 = tl.load(C_ptr + bc3 + bn).to(tl.float32)
    A_n = tl.load(a_row + n)  # A times log2(e), from the program's scratch: exp(x) = exp2(x log2 e)
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 = _steps(
        tl.exp2(dl0 * A_n), tl.exp2(dl1 * A_n), tl.exp2(dl2 * A_n), tl.exp2(dl3 * A_n), REVERSE)
    b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15 = _steps(
        dlu0 * B0, dlu1 * B1, dlu2 * B2, dlu3 * B3, REVERSE)
    # 1. the row's map h -> ra h + rb: rb along the steps, ra at once (the product of the steps' exp(delta A) is
    #    exp(A sum delta), one exponential per row instead of 15 multiplications)
    rb = a1 * b0 + b1
    rb = a2 * rb + b2
    rb = a3 * rb + b3
    rb = a4 * rb + b4
    rb = a5 * rb + b5
    rb = a6 * rb + b6
    rb = a7 * rb + b7
    rb = a8 * rb + b8
    rb = a9 * rb + b9
    rb = a10 * rb + b10
    rb = a11 * rb + b11
    rb = a12 * rb + b12
    rb = a13 * rb + b13
    rb = a14 * rb + b14
    rb = a15 * rb + b15
    ra = tl.exp2(row_dl * A_n)
    # 2. each row's start state: the exclusive scan of the row maps, applied to the chunk's start state
    _ia, _ib, ea, eb = tl.associative_scan((ra, rb, ones, zeros), axis=0, combine_fn=_combine_excl)
    h = eb + ea * h0
    if SAVE_STATES:  # the rows that start one of the backward's chunks
        tl.store(state_row + (save_at // SAVE_EVERY) * d_state + n, h,
                 mask=(save_at % SAVE_EVERY == 0) & (save_at < length))
    # 3. the row's steps from its start state, each state times C
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15 = _steps(C0, C1, C2, C3, REVERSE)
    h = a0 * h + b0
    y0 = c0 * h
    h = a1 * h + b1
    y1 = c1 * h
    h = a2 * h + b2
    y2 = c2 * h
    h = a3 * h + b3
    y3 = c3 * h
    h = a4 * h + b4
    y4 = c4 * h
    h = a5 * h + b5
    y5 = c5 * h
    h = a6 * h + b6
    y6 = c6 * h
    h = a7 * h + b7
    y7 = c7 * h
    h = a8 * h + b8
    y8 = c8 * h
    h = a9 * h + b9
    y9 = c9 * h
    h = a10 * h + b10
    y10 = c10 * h
    h = a11 * h + b11
    y11 = c11 * h
    h = a12 * h + b12
    y12 = c12 * h
    h = a13 * h + b13
    y13 = c13 * h
    h = a14 * h + b14
    y14 = c14 * h
    h = a15 * h + b15
    y15 = c15 * h
    tl.store(carry_next + n + 0 * r, h, mask=r == ROWS - 1)  # the last row's end: the next chunk's start
    return _tiles(y0, y1, y2, y3, y4, y5, y6, y7, y8, y9, y10, y11, y12, y13, y14, y15, REVERSE)


@triton.jit
def _projected(dt_ptr, w_ptr, b_row, d, t0, t1, t2, t3, s_bn, s_bl, RANK: tl.constexpr):
    """``delta = W_dt dt`` at the steps of the four tiles: the dt_proj matmul inside the scan (``dt`` has the
    strides of B and C, being rows of the same projection; ``W_dt`` is (channels, RANK))."""
    p0 = tl.zeros(t0.shape, dtype=tl.float32)
    p1 = tl.zeros(t0.shape, dtype=tl.float32)
    p2 = tl.zeros(t0.shape, dtype=tl.float32)
    p3 = tl.zeros(t0.shape, dtype=tl.float32)
    for k in tl.static_range(RANK):
        w = tl.load(w_ptr + d * RANK + k).to(tl.float32)
        row = dt_ptr + b_row + k * s_bn
        p0 += w * tl.load(row + t0 * s_bl).to(tl.float32)
        p1 += w * tl.load(row + t1 * s_bl).to(tl.float32)
        p2 += w * tl.load(row + t2 * s_bl).to(tl.float32)
        p3 += w * tl.load(row + t3 * s_bl).to(tl.float32)
    return p0, p1, p2, p3


@triton.jit
def _valid_delta(pre, t, valid_length, SOFTPLUS: tl.constexpr):
    """``_delta`` of ``pre``, and an identity step (delta 0) from ``valid_length`` on."""
    if SOFTPLUS:
        return _delta(tl.where(t < valid_length, pre, float("-inf")), SOFTPLUS)
    return tl.where(t < valid_length, pre, 0.0)


@triton.jit
def _scan_channel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ypre_ptr, dt_ptr, w_dt_ptr,
                  state_row, carry_row, x_row, b_row, d, length, valid_length, d_state, s_xl, s_bn, s_bl,
                  HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                  SAVE_STATES: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr, STAGES: tl.constexpr,
                  SAVE_EVERY: tl.constexpr, UNROLL: tl.constexpr, DT_RANK: tl.constexpr, HALF_ADD: tl.constexpr,
                  A_LOG: tl.constexpr):
    """One channel of one batch element, the whole sequence: ``fwd_serial_kernel``'s program, given the
    channel's offsets (``x_row`` into u, delta, z and out; ``b_row`` into B, C and dt) and its rows of saved states
    and of scratch (``triton_ops.serial_scratch``).  HALF_ADD: the output is not stored but half of it added
    atomically into ``out`` (zeroed by the caller), for two programs whose outputs are averaged
    (``fwd_serial_pair_kernel``).  A_LOG: ``A_ptr`` holds the parameter A_log, and A = -exp(A_log).  ``carry_row``:
    ``SERIAL_SCRATCH_PER_STATE`` x d_state floats, two slots of carried state and the channel's A times log2(e),
    written once here so that the state loop loads it ready (no multiply; for A_LOG no exponential either, where the
    host would have run two ops per scan)."""
    ROWS: tl.constexpr = CHUNK // 16
    r = tl.arange(0, ROWS)
    j = tl.arange(0, 4)[None, :]
    Dv = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + d).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    # scan order: tile k of a row holds the steps 16 r + o_k + j (read last to first in reverse)
    if REVERSE:
        o0, o1, o2, o3 = 12, 8, 4, 0
        rows = (ROWS - 1 - r)[:, None] * 16
    else:
        o0, o1, o2, o3 = 0, 4, 8, 12
        rows = r[:, None] * 16
    ones = tl.full((ROWS,), 1.0, tl.float32)
    zeros = tl.zeros((ROWS,), dtype=tl.float32)
    a_row = carry_row + 2 * d_state
    for n in range(d_state):
        a = tl.load(A_ptr + d * d_state + n).to(tl.float32)
        if A_LOG:
            a = -tl.exp(a)
        tl.store(a_row + n, a * 1.4426950408889634)
    tl.debug_barrier()  # the row written before any lane reads it
    for ci in range(tl.cdiv(length, CHUNK)):
        if REVERSE:
            c0 = length - (ci + 1) * CHUNK
        else:
            c0 = ci * CHUNK
        # Rows past the sequence's end (in scan order: after every real step, so they cannot change a real
        # output) read a real row instead of masked zeros: no register zeroing, no predicated loads.  Lengths and
        # chunks are multiples of 16, so a row is all in or all out.
        if REVERSE:
            row = tl.maximum(c0 + rows, 0)
            keep = c0 + rows >= 0
        else:
            row = tl.minimum(c0 + rows, length - 16)
            keep = c0 + rows < length
        t0 = row + o0 + j
        t1 = row + o1 + j
        t2 = row + o2 + j
        t3 = row + o3 + j
        x0 = x_row + t0 * s_xl
        x1 = x_row + t1 * s_xl
        x2 = x_row + t2 * s_xl
        x3 = x_row + t3 * s_xl
        u0 = tl.load(u_ptr + x0).to(tl.float32)
        u1 = tl.load(u_ptr + x1).to(tl.float32)
        u2 = tl.load(u_ptr + x2).to(tl.float32)
        u3 = tl.load(u_ptr + x3).to(tl.float32)
        if DT_RANK > 0:
            pre0, pre1, pre2, pre3 = _projected(dt_ptr, w_dt_ptr, b_row, d, t0, t1, t2, t3, s_bn, s_bl, DT_RANK)
            dl0 = _valid_delta(pre0 + bias, t0, valid_length, SOFTPLUS)
            dl1 = _valid_delta(pre1 + bias, t1, valid_length, SOFTPLUS)
            dl2 = _valid_delta(pre2 + bias, t2, valid_length, SOFTPLUS)
            dl3 = _valid_delta(pre3 + bias, t3, valid_length, SOFTPLUS)
        else:
            dl0 = _delta(tl.load(dl_ptr + x0).to(tl.float32) + bias, SOFTPLUS)
            dl1 = _delta(tl.load(dl_ptr + x1).to(tl.float32) + bias, SOFTPLUS)
            dl2 = _delta(tl.load(dl_ptr + x2).to(tl.float32) + bias, SOFTPLUS)
            dl3 = _delta(tl.load(dl_ptr + x3).to(tl.float32) + bias, SOFTPLUS)
        row_dl = tl.sum(dl0, axis=1) + tl.sum(dl1, axis=1) + tl.sum(dl2, axis=1) + tl.sum(dl3, axis=1)
        dlu0 = dl0 * u0
        dlu1 = dl1 * u1
        dlu2 = dl2 * u2
        dlu3 = dl3 * u3
        y0 = Dv * u0
        y1 = Dv * u1
        y2 = Dv * u2
        y3 = Dv * u3
        save_at = ci * CHUNK + 16 * r  # scan position of each row's first step
        bc0 = b_row + t0 * s_bl
        bc1 = b_row + t1 * s_bl
        bc2 = b_row + t2 * s_bl
        bc3 = b_row + t3 * s_bl
        # The state carried between chunks goes through memory (two slots, read one, write the other; a barrier
        # per chunk orders them): one store and one uniform load per state, where taking the last row's value
        # and picking state n out of a register vector were two cross-lane reductions.
        carry_in = carry_row + (ci % 2) * d_state
        carry_next = carry_row + ((ci + 1) % 2) * d_state
        for n in tl.range(0, d_state, UNROLL, num_stages=STAGES):
            h0 = tl.load(carry_in + n, mask=ci > 0, other=0.0)
            p0, p1, p2, p3 = _state(n, a_row, B_ptr, C_ptr, bc0, bc1, bc2, bc3, s_bn, d_state, dl0, dl1, dl2,
                                    dl3, dlu0, dlu1, dlu2, dlu3, row_dl, h0, ones, zeros, r, carry_next, state_row,
                                    save_at, length, ROWS, REVERSE, SAVE_STATES, SAVE_EVERY)
            y0 += p0
            y1 += p1
            y2 += p2
            y3 += p3
            if UNROLL == 2:
                h0 = tl.load(carry_in + n + 1, mask=ci > 0, other=0.0)
                p0, p1, p2, p3 = _state(n + 1, a_row, B_ptr, C_ptr, bc0, bc1, bc2, bc3, s_bn, d_state, dl0, dl1,
                                        dl2, dl3, dlu0, dlu1, dlu2, dlu3, row_dl, h0, ones, zeros, r, carry_next,
                                        state_row, save_at, length, ROWS, REVERSE, SAVE_STATES, SAVE_EVERY)
                y0 += p0
                y1 += p1
                y2 += p2
                y3 += p3
        tl.debug_barrier()  # this chunk's carry stores before the next chunk's loads
        if HAS_Z:
            if SAVE_STATES:
                tl.store(ypre_ptr + x0, y0, mask=keep)
                tl.store(ypre_ptr + x1, y1, mask=keep)
                tl.store(ypre_ptr + x2, y2, mask=keep)
                tl.store(ypre_ptr + x3, y3, mask=keep)
            z0 = tl.load(z_ptr + x0).to(tl.float32)
            z1 = tl.load(z_ptr + x1).to(tl.float32)
            z2 = tl.load(z_ptr + x2).to(tl.float32)
            z3 = tl.load(z_ptr + x3).to(tl.float32)
            y0 = y0 * z0 * tl.sigmoid(z0)
            y1 = y1 * z1 * tl.sigmoid(z1)
            y2 = y2 * z2 * tl.sigmoid(z2)
            y3 = y3 * z3 * tl.sigmoid(z3)
        if HALF_ADD:  # exact: two halves onto zero give one rounding, in either order
            tl.atomic_add(out_ptr + x0, 0.5 * y0, mask=keep, sem="relaxed")
            tl.atomic_add(out_ptr + x1, 0.5 * y1, mask=keep, sem="relaxed")
            tl.atomic_add(out_ptr + x2, 0.5 * y2, mask=keep, sem="relaxed")
            tl.atomic_add(out_ptr + x3, 0.5 * y3, mask=keep, sem="relaxed")
        else:
            tl.store(out_ptr + x0, y0, mask=keep)
            tl.store(out_ptr + x1, y1, mask=keep)
            tl.store(out_ptr + x2, y2, mask=keep)
            tl.store(out_ptr + x3, y3, mask=keep)


def fwd_serial_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr, ypre_ptr, carry_ptr,
    dt_ptr, w_dt_ptr, dim, length, valid_length, d_state, n_chunks,
    s_xb, s_xd, s_xl, s_bb, s_bn, s_bl, s_carry,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr = False,
    STAGES: tl.constexpr = 1, SAVE_EVERY: tl.constexpr = 512, UNROLL: tl.constexpr = 1, DT_RANK: tl.constexpr = 0,
):
    """The forward scan of one (batch, channel) per program; the arguments of ``fwd_loop_kernel`` less the channel
    block, except that ``n_chunks`` counts the saved states (the backward's chunks of SAVE_EVERY steps, a multiple
    of 16); same outputs (``out``, and with SAVE_STATES the states and the pre-gate output).  ``carry_ptr``:
    ``triton_ops.serial_scratch((batch, dim), ...)``, its rows ``s_carry`` apart.
    STAGES > 1: Triton software-pipelines the loop over states, copying the next states' B and C rows to shared
    memory while this one is scanned (fewer registers held than loading them ahead by hand, more instructions).
    UNROLL = 2 scans two states per pass of that loop (d_state even), so that the two independent chains of
    dependent instructions interleave.  DT_RANK > 0 (inference): ``delta`` is not read but computed, ``W_dt dt``
    from ``w_dt_ptr`` (channels, DT_RANK) and ``dt_ptr`` (batch, DT_RANK, length; B's strides), the steps from
    ``valid_length`` on made identity steps: the mixer's dt_proj matmul, its output and the padding fill saved."""
    pid_b = tl.program_id(0)
    d = tl.program_id(1)
    channel = pid_b * dim + d
    _scan_channel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ypre_ptr, dt_ptr, w_dt_ptr,
                  states_ptr + channel * n_chunks * d_state, carry_ptr + channel * s_carry,
                  pid_b * s_xb + d * s_xd, pid_b * s_bb, d, length, valid_length, d_state, s_xl, s_bn, s_bl,
                  HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE_STATES, CHUNK, REVERSE, STAGES, SAVE_EVERY, UNROLL, DT_RANK,
                  False, False)
