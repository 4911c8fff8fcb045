"""The "loop" and "chunked" algorithms of the triton scan: the state index is a loop, time is the tile.

Where ``triton_ops``' "tile" kernels scan a (channels, states, time) tile, whose layout spreads the time axis over
the lanes of a warp (every scan level is a shuffle) and sums the states across lanes, these kernels hold a
(channels, time) tile and loop over the N states, like mamba_ssm's CUDA kernel: each thread scans its consecutive
steps sequentially and only the per-thread partials cross lanes, and ``y`` accumulates over the states in
registers with no reduction.  Long chunks (hundreds of steps) amortise the per-chunk state hand-over.

Same signatures, state layout and semantics as the tile kernels (see ``triton_ops``); with a ``z`` gate the forward
also saves the pre-gate output, which the backward needs for dz (as mamba_ssm does).

"chunked" runs the forward in three launches so that the chunks of a sequence run in parallel too (SSAMBA-tiny at
batch 2 has only 768 (batch, channel) pairs for an H200's 132 SMs): ``chunk_end_kernel`` computes every chunk's end
state from a zero start, ``chunk_carry_kernel`` chains them into the true chunk start states (the same ``states``
the backward reads), and the forward kernel then computes all chunks at once.  The backward is the loop one.
Measured on an H200 it barely pays (B=2, L=16384: 0.46 ms at best vs 0.52 for "loop"): what limits these kernels is
the instruction count per state update (``benchmarks/triton_ptx.py``), not the sequential walk over the chunks.
"""
from __future__ import annotations

from ssamba.models.scan.triton_ops import _channel_block, _channel_values, _chunk_steps, _combine, _load_delta, tl


def fwd_loop_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr, ypre_ptr,
    dim, length, d_state, n_chunks,
    s_xb, s_xd, s_xl, s_bb, s_bn, s_bl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    CHUNK_PARALLEL: tl.constexpr = False, REVERSE: tl.constexpr = False,
):
    """The forward scan.  Sequential: a program walks all chunks, carrying the state (and saves each chunk's start
    state with SAVE_STATES).  CHUNK_PARALLEL: a program computes one chunk (program axis 2) from the start state
    that ``chunk_end_kernel`` and ``chunk_carry_kernel`` wrote to ``states``.  REVERSE: see ``_chunk_steps``."""
    pid_b, offs_d, offs_n, mask_d, mask_dn = _channel_block(dim, d_state, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    log2e = 1.4426950408889634
    Dv = _channel_values(D_ptr, offs_d, mask_d, HAS_D, BLOCK_D)
    bias = _channel_values(bias_ptr, offs_d, mask_d, HAS_BIAS, BLOCK_D)
    state_off = ((pid_b * dim + offs_d[:, None]) * n_chunks) * d_state + offs_n[None, :]
    if CHUNK_PARALLEL:
        c_lo = tl.program_id(2)
        c_hi = c_lo + 1
        carry = tl.load(states_ptr + state_off + c_lo * d_state, mask=mask_dn, other=0.0)
    else:
        c_lo = 0
        c_hi = n_chunks
        carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # state of every (channel, n) at the chunk start
    if REVERSE:
        end_pos = 0  # where a chunk's last scan step sits in the tile
    else:
        end_pos = CHUNK - 1
    for ci in range(c_lo, c_hi):
        t, mask_t = _chunk_steps(ci, offs_t, length, CHUNK, REVERSE)
        mask_x = mask_d[:, None] & mask_t[None, :]
        x_off = pid_b * s_xb + offs_d[:, None] * s_xd + t[None, :] * s_xl
        u = tl.load(u_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
        dl, _ = _load_delta(dl_ptr + x_off, mask_x, bias[:, None], SOFTPLUS)  # 0 past the end: the identity step
        dlu = dl * u
        if SAVE_STATES and not CHUNK_PARALLEL:
            tl.store(states_ptr + state_off + ci * d_state, carry, mask=mask_dn)
        y = Dv[:, None] * u
        # state n's A, B, C are loaded one iteration ahead: the loads of n + 1 overlap the scan of n
        bc = pid_b * s_bb + t * s_bl
        A_n = tl.load(A_ptr + offs_d * d_state, mask=mask_d, other=0.0).to(tl.float32) * log2e
        B_n = tl.load(B_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
        C_n = tl.load(C_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
        for n in range(d_state):
            nxt = (n + 1) % d_state  # the last iteration reloads state 0, unused
            A_next = tl.load(A_ptr + offs_d * d_state + nxt, mask=mask_d, other=0.0).to(tl.float32) * log2e
            B_next = tl.load(B_ptr + bc + nxt * s_bn, mask=mask_t, other=0.0).to(tl.float32)
            C_next = tl.load(C_ptr + bc + nxt * s_bn, mask=mask_t, other=0.0).to(tl.float32)
            h0 = tl.sum(tl.where(offs_n[None, :] == n, carry, 0.0), axis=1)
            pa, pb = tl.associative_scan((tl.exp2(dl * A_n[:, None]), dlu * B_n[None, :]), axis=1,
                                         combine_fn=_combine, reverse=REVERSE)
            h = pb + pa * h0[:, None]
            y += h * C_n[None, :]
            if not CHUNK_PARALLEL:  # the next chunk's start state (the chunk-parallel mode has it already)
                h_last = tl.sum(tl.where((offs_t == end_pos)[None, :], h, 0.0), axis=1)
                carry = tl.where(offs_n[None, :] == n, h_last[:, None], carry)
            A_n, B_n, C_n = A_next, B_next, C_next
        if HAS_Z:
            if SAVE_STATES:
                tl.store(ypre_ptr + x_off, y, mask=mask_x)
            zt = tl.load(z_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
            y = y * zt * tl.sigmoid(zt)
        tl.store(out_ptr + x_off, y, mask=mask_x)


def chunk_end_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, bias_ptr, ends_ptr, dsum_ptr,
    dim, length, d_state, n_chunks,
    s_xb, s_xd, s_xl, s_bb, s_bn, s_bl,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    """First pass of the chunk-parallel forward, one program per (batch, channel block, chunk): the chunk's end
    state from a zero start, ``sum_t exp(A sum_{s>t} delta_s) delta_t u_t B_t``, and ``sum_t delta_t`` (the chunk's
    decay is ``exp(A sum delta)``).  A weighted sum over time, not a scan: one reverse cumsum of delta serves all N
    states."""
    pid_b, offs_d, offs_n, mask_d, mask_dn = _channel_block(dim, d_state, BLOCK_D, BLOCK_N)
    ci = tl.program_id(2)
    offs_t = tl.arange(0, CHUNK)
    log2e = 1.4426950408889634
    bias = _channel_values(bias_ptr, offs_d, mask_d, HAS_BIAS, BLOCK_D)
    t, mask_t = _chunk_steps(ci, offs_t, length, CHUNK, REVERSE)
    mask_x = mask_d[:, None] & mask_t[None, :]
    x_off = pid_b * s_xb + offs_d[:, None] * s_xd + t[None, :] * s_xl
    u = tl.load(u_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
    dl, _ = _load_delta(dl_ptr + x_off, mask_x, bias[:, None], SOFTPLUS)  # 0 past the end: the identity step
    dlu = dl * u
    rest = tl.cumsum(dl, axis=1, reverse=not REVERSE) - dl  # sum of delta over the later steps of the chunk
    bc = pid_b * s_bb + t * s_bl
    ends = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for n in range(d_state):
        A2_n = tl.load(A_ptr + offs_d * d_state + n, mask=mask_d, other=0.0).to(tl.float32) * log2e
        B_n = tl.load(B_ptr + bc + n * s_bn, mask=mask_t, other=0.0).to(tl.float32)
        end_n = tl.sum(dlu * B_n[None, :] * tl.exp2(rest * A2_n[:, None]), axis=1)
        ends = tl.where(offs_n[None, :] == n, end_n[:, None], ends)
    state_off = ((pid_b * dim + offs_d[:, None]) * n_chunks + ci) * d_state + offs_n[None, :]
    tl.store(ends_ptr + state_off, ends, mask=mask_dn)
    tl.store(dsum_ptr + (pid_b * dim + offs_d) * n_chunks + ci, tl.sum(dl, axis=1), mask=mask_d)


def chunk_carry_kernel(
    states_ptr, dsum_ptr, A_ptr, dim, d_state, n_chunks,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Second pass: walks the chunks of a (batch, channel block), turning each chunk's zero-start end state (read
    from ``states``) into the chunk's true start state (written in its place): ``h <- exp(A sum delta) h + end``.
    """
    pid_b, offs_d, offs_n, mask_d, mask_dn = _channel_block(dim, d_state, BLOCK_D, BLOCK_N)
    A2 = tl.load(A_ptr + offs_d[:, None] * d_state + offs_n[None, :], mask=mask_dn, other=0.0) * 1.4426950408889634
    base = (pid_b * dim + offs_d) * n_chunks
    carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for ci in range(n_chunks):
        off = (base[:, None] + ci) * d_state + offs_n[None, :]
        end = tl.load(states_ptr + off, mask=mask_dn, other=0.0)
        tl.store(states_ptr + off, carry, mask=mask_dn)
        dsum = tl.load(dsum_ptr + base + ci, mask=mask_d, other=0.0)
        carry = tl.exp2(A2 * dsum[:, None]) * carry + end


def bwd_loop_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, ypre_ptr,
    du_ptr, ddl_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, length, d_state, n_chunks,
    s_xb, s_xd, s_xl, s_bb, s_bn, s_bl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr = False,
):
    """The backward, walking the chunks from the last scan step to the first.  REVERSE: a reverse scan read in
    ascending memory order (``_chunk_steps``), so the scan's previous step is the next memory position, the two
    inner scans run the other way, and dB/dC are indexed by memory position."""
    pid_b, offs_d, offs_n, mask_d, mask_dn = _channel_block(dim, d_state, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    log2e = 1.4426950408889634
    Dv = _channel_values(D_ptr, offs_d, mask_d, HAS_D, BLOCK_D)
    bias = _channel_values(bias_ptr, offs_d, mask_d, HAS_BIAS, BLOCK_D)
    state_off = ((pid_b * dim + offs_d[:, None]) * n_chunks) * d_state + offs_n[None, :]
    g_carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # adjoint of the state after this chunk
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if REVERSE:  # memory offsets of the previous scan step, and where a chunk's first step sits in the tile
        x_back = s_xl
        b_back = s_bl
        first_pos = CHUNK - 1
    else:
        x_back = -s_xl
        b_back = -s_bl
        first_pos = 0
    for i in range(n_chunks):
        ci = n_chunks - 1 - i
        t, mask_t = _chunk_steps(ci, offs_t, length, CHUNK, REVERSE)
        mask_x = mask_d[:, None] & mask_t[None, :]
        x_off = pid_b * s_xb + offs_d[:, None] * s_xd + t[None, :] * s_xl
        u = tl.load(u_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
        dl, dl_pre = _load_delta(dl_ptr + x_off, mask_x, bias[:, None], SOFTPLUS)
        # the step before (inside this chunk only: the saved chunk-start state stands for the rest)
        if REVERSE:
            prev_ok = (offs_t < CHUNK - 1) & (t + 1 >= 0)
            next_ok = t - 1 >= 0
        else:
            prev_ok = (offs_t >= 1) & (t - 1 < length)
            next_ok = t + 1 < length
        mask_p = mask_d[:, None] & prev_ok[None, :]
        u_p = tl.load(u_ptr + x_off + x_back, mask=mask_p, other=0.0).to(tl.float32)
        dl_p, _ = _load_delta(dl_ptr + x_off + x_back, mask_p, bias[:, None], SOFTPLUS)
        # the step after (reaching into the next chunk)
        mask_nx = mask_d[:, None] & next_ok[None, :]
        dl_n, _ = _load_delta(dl_ptr + x_off - x_back, mask_nx, bias[:, None], SOFTPLUS)

        dout = tl.load(dout_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
        dy = dout
        if HAS_Z:
            zt = tl.load(z_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
            y = tl.load(ypre_ptr + x_off, mask=mask_x, other=0.0)
            sz = tl.sigmoid(zt)
            tl.store(dz_ptr + x_off, dout * y * sz * (1.0 + zt * (1.0 - sz)), mask=mask_x)
            dy = dout * zt * sz
        dD_acc += tl.sum(dy * u, axis=1)
        h_in_all = tl.load(states_ptr + state_off + ci * d_state, mask=mask_dn, other=0.0)
        dlu = dl * u
        dlu_p = dl_p * u_p
        du = Dv[:, None] * dy
        ddl = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        for n in range(d_state):
            A_n = tl.load(A_ptr + offs_d * d_state + n, mask=mask_d, other=0.0).to(tl.float32)
            A2_n = A_n * log2e
            bc = pid_b * s_bb + n * s_bn + t * s_bl
            B_n = tl.load(B_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
            B_p = tl.load(B_ptr + bc + b_back, mask=prev_ok, other=0.0).to(tl.float32)
            sel = offs_n[None, :] == n
            h_in = tl.sum(tl.where(sel, h_in_all, 0.0), axis=1)
            pa, pb = tl.associative_scan((tl.exp2(dl_p * A2_n[:, None]), dlu_p * B_p[None, :]), axis=1,
                                         combine_fn=_combine, reverse=REVERSE)
            h_prev = pb + pa * h_in[:, None]
            dA = tl.exp2(dl * A2_n[:, None])
            h = dA * h_prev + dlu * B_n[None, :]
            g_next = tl.sum(tl.where(sel, g_carry, 0.0), axis=1)
            ga, gb = tl.associative_scan((tl.exp2(dl_n * A2_n[:, None]), C_n[None, :] * dy), axis=1,
                                         combine_fn=_combine, reverse=not REVERSE)
            gs = gb + ga * g_next[:, None]
            gB = gs * B_n[None, :]
            du += gB * dl
            decay_term = gs * dA * h_prev
            ddl += gB * u + decay_term * A_n[:, None]
            dA_acc = tl.where(sel, dA_acc + tl.sum(decay_term * dl, axis=1)[:, None], dA_acc)
            tl.atomic_add(dB_ptr + (pid_b * d_state + n) * length + t, tl.sum(gs * dlu, axis=0), mask=mask_t)
            tl.atomic_add(dC_ptr + (pid_b * d_state + n) * length + t, tl.sum(h * dy, axis=0), mask=mask_t)
            g_first = tl.sum(tl.where((offs_t == first_pos)[None, :], gs, 0.0), axis=1)
            g_carry = tl.where(sel, g_first[:, None], g_carry)
        if SOFTPLUS:
            ddl = ddl * tl.where(dl_pre <= 20.0, tl.sigmoid(dl_pre), 1.0)
        ddl = tl.where(mask_x, ddl, 0.0)
        dbias_acc += tl.sum(ddl, axis=1)
        tl.store(du_ptr + x_off, du, mask=mask_x)
        tl.store(ddl_ptr + x_off, ddl, mask=mask_x)
    tl.store(dA_ptr + (pid_b * dim + offs_d[:, None]) * d_state + offs_n[None, :], dA_acc, mask=mask_dn)
    tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)
