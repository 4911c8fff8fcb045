"""The "serial" forward of the triton scan: every thread scans 16 consecutive steps in registers.

Why.  In the "loop" kernels a (channels, chunk) tile is scanned with ``tl.associative_scan``, whose cost per step is
set by how many consecutive steps a thread holds: Triton lays loaded float32 tiles out 4 per thread (one 16-byte
vector), so every scan does its 5 levels of warp shuffles, and a pass through shared memory across warps, for every
4 steps, whatever the chunk length (longer chunks only repeat the pattern).  Compiled for sm_90 its state loop is 43
machine instructions per state update, 5.3 of them shuffles (46 and 9.3 reversed); on an H200 the "loop" forward
ran at ~10x the memory-bandwidth floor.  This kernel's loop is 15 per update, 1.3 of them shuffles, in either
direction (``benchmarks/triton_ptx.py`` reads both off the cubin); not yet timed on a GPU.

How.  A chunk of ``CHUNK = 16 * ROWS`` steps is held as four (ROWS, 4) tiles; tile ``k`` has the steps
``16 r + 4 k + j`` of row ``r``, so one thread owns row ``r``'s 16 consecutive steps as four 16-byte vectors (every
load and store stays vectorised).  For each state ``n``:

1. each tile is scanned along its 4-wide axis (in-thread, written out: no shuffles) and its end value taken;
2. the four tile totals are chained into the row's total, element-wise;
3. one scan across the rows, one value per thread, gives each row's start state.  It is an exclusive scan, made
   from ``tl.associative_scan`` by scanning (inclusive, exclusive) pairs (``_combine_excl``);
4. each step's state is its in-tile scan applied to its tile's start state, and ``y`` accumulates ``C h`` in
   registers; the state after the chunk is the last row's end state (one reduction), carried to the next chunk.

So the cross-lane work is one scan and one reduction per 16 steps instead of per 4.  A reverse scan reads memory in
ascending order like the loop kernels (``REVERSE``): thread ``r`` takes the row ``ROWS - 1 - r`` and the tiles and
steps of a row run last to first, so the scan across rows is still a forward one (a reversed
``tl.associative_scan`` compiles to more shuffles).

Rows past the end of the sequence (the last chunk's) read the last real row again instead of masked zeros: they
come after every real step in scan order, so they cannot change an output, and their stores are masked.

Only the forward: training runs the "loop" backward at its own launch shape (``triton_ops.SERIAL_BACKWARD``), from
the states this kernel saves (``SAVE_STATES``) every ``SAVE_EVERY`` steps of the scan, the start of each of the
backward's chunks (a row start: the state entering the row), and the pre-gate output (``ypre``) when there is a
``z`` gate.  One channel per program (``block_d`` 1): the row axis is what fills the warps.
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
def _scan4(a, b, REVERSE: tl.constexpr):
    """Inclusive scan of the steps (a, b) of a (ROWS, 4) tile along its rows, each thread walking its own 4 steps
    (``tl.associative_scan`` compiles a reverse scan to warp shuffles even along an in-thread axis), and each
    row's end value (the total of its 4 steps)."""
    a0, a1, a2, a3 = _columns(a)
    b0, b1, b2, b3 = _columns(b)
    if REVERSE:  # scan order: column 3 to 0
        a0, a1, a2, a3, b0, b1, b2, b3 = a3, a2, a1, a0, b3, b2, b1, b0
    b1 = a1 * b0 + b1
    a1 = a1 * a0
    b2 = a2 * b1 + b2
    a2 = a2 * a1
    b3 = a3 * b2 + b3
    a3 = a3 * a2
    end_a, end_b = a3, b3
    if REVERSE:
        a0, a1, a2, a3, b0, b1, b2, b3 = a3, a2, a1, a0, b3, b2, b1, b0
    return _tile(a0, a1, a2, a3), _tile(b0, b1, b2, b3), end_a, end_b


def fwd_serial_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr, ypre_ptr,
    dim, length, d_state, n_chunks,
    s_xb, s_xd, s_xl, s_bb, s_bn, s_bl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr = False,
    STAGES: tl.constexpr = 1, SAVE_EVERY: tl.constexpr = 512,
):
    """The forward scan of one (batch, channel) per program; the arguments of ``fwd_loop_kernel`` less the channel
    block, except that ``n_chunks`` counts the saved states (the backward's chunks of SAVE_EVERY steps, a multiple
    of 16); same outputs (``out``, and with SAVE_STATES the states and the pre-gate output).
    STAGES > 1: Triton software-pipelines the loop over states, copying the next states' B and C rows to shared
    memory while this one is scanned (fewer registers held than loading them ahead by hand, more instructions)."""
    ROWS: tl.constexpr = CHUNK // 16
    pid_b = tl.program_id(0)
    d = tl.program_id(1)
    r = tl.arange(0, ROWS)
    j = tl.arange(0, 4)[None, :]
    offs_n = tl.arange(0, BLOCK_N)
    log2e = 1.4426950408889634
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
    x_row = pid_b * s_xb + d * s_xd
    b_row = pid_b * s_bb
    state_row = states_ptr + (pid_b * dim + d) * n_chunks * d_state
    ones = tl.full((ROWS,), 1.0, tl.float32)
    zeros = tl.zeros((ROWS,), dtype=tl.float32)
    carry = tl.zeros((BLOCK_N,), dtype=tl.float32)  # every state at the chunk start
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
        dl0 = _delta(tl.load(dl_ptr + x0).to(tl.float32) + bias, SOFTPLUS)
        dl1 = _delta(tl.load(dl_ptr + x1).to(tl.float32) + bias, SOFTPLUS)
        dl2 = _delta(tl.load(dl_ptr + x2).to(tl.float32) + bias, SOFTPLUS)
        dl3 = _delta(tl.load(dl_ptr + x3).to(tl.float32) + bias, SOFTPLUS)
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
        for n in tl.range(0, d_state, num_stages=STAGES):
            bn = n * s_bn
            B0 = tl.load(B_ptr + bc0 + bn).to(tl.float32)
            B1 = tl.load(B_ptr + bc1 + bn).to(tl.float32)
            B2 = tl.load(B_ptr + bc2 + bn).to(tl.float32)
            B3 = tl.load(B_ptr + bc3 + bn).to(tl.float32)
            C0 = tl.load(C_ptr + bc0 + bn).to(tl.float32)
            C1 = tl.load(C_ptr + bc1 + bn).to(tl.float32)
            C2 = tl.load(C_ptr + bc2 + bn).to(tl.float32)
            C3 = tl.load(C_ptr + bc3 + bn).to(tl.float32)
            A_n = tl.load(A_ptr + d * d_state + n).to(tl.float32) * log2e
            h0 = tl.sum(tl.where(offs_n == n, carry, 0.0), axis=0)
            # 1. in-tile scans (each thread's own 4 steps) and their totals
            a0, b0, ta0, tb0 = _scan4(tl.exp2(dl0 * A_n), dlu0 * B0, REVERSE)
            a1, b1, ta1, tb1 = _scan4(tl.exp2(dl1 * A_n), dlu1 * B1, REVERSE)
            a2, b2, ta2, tb2 = _scan4(tl.exp2(dl2 * A_n), dlu2 * B2, REVERSE)
            a3, b3, ta3, tb3 = _scan4(tl.exp2(dl3 * A_n), dlu3 * B3, REVERSE)
            # 2. the row's total, tile 0 then 1, 2, 3
            ra = ta0 * ta1 * ta2 * ta3
            rb = ((tb0 * ta1 + tb1) * ta2 + tb2) * ta3 + tb3
            # 3. each row's start state: the exclusive scan across rows, applied to the chunk's start state
            _ia, _ib, ea, eb = tl.associative_scan((ra, rb, ones, zeros), axis=0, combine_fn=_combine_excl)
            h_in0 = eb + ea * h0
            if SAVE_STATES:  # the rows that start one of the backward's chunks
                tl.store(state_row + (save_at // SAVE_EVERY) * d_state + n, h_in0,
                         mask=(save_at % SAVE_EVERY == 0) & (save_at < length))
            h_in1 = ta0 * h_in0 + tb0
            h_in2 = ta1 * h_in1 + tb1
            h_in3 = ta2 * h_in2 + tb2
            # 4. the states of every step, summed into y
            y0 += (b0 + a0 * h_in0[:, None]) * C0
            y1 += (b1 + a1 * h_in1[:, None]) * C1
            y2 += (b2 + a2 * h_in2[:, None]) * C2
            y3 += (b3 + a3 * h_in3[:, None]) * C3
            h_end = tl.sum(tl.where(r == ROWS - 1, ta3 * h_in3 + tb3, 0.0), axis=0)
            carry = tl.where(offs_n == n, h_end, carry)
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
        tl.store(out_ptr + x0, y0, mask=keep)
        tl.store(out_ptr + x1, y1, mask=keep)
        tl.store(out_ptr + x2, y2, mask=keep)
        tl.store(out_ptr + x3, y3, mask=keep)
