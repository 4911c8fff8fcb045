"""The "triton" scan backend: Mamba-1 selective scan for GPUs, with nothing to compile by hand.

PyTorch's CUDA builds ship Triton, so this backend gives GPU users a fast scan without building ``mamba_ssm``.

Algorithm.  A program owns one batch element and a block of ``block_d`` channels, and walks the sequence in chunks of
``chunk`` steps, carrying the state ``h`` (block_d, N) between chunks.  Inside a chunk the recurrence
``h_t = a_t h_{t-1} + b_t`` (``a = exp(delta A)``, ``b = delta u B``) is an associative scan over time, so every step
of the chunk is computed in parallel.  Four algorithms (``TritonConfig.algo``): "tile" (this module) scans a
(block_d, N, chunk) tile; "loop" (``triton_loop``, the default: 1.4x faster forward on an H200) loops over the N
states with a (block_d, chunk) tile, so ``y`` needs no reduction over the states and each thread scans several
consecutive steps before any cross-lane exchange; "chunked" is "loop" with a forward that computes all chunks of a
sequence in parallel from precomputed chunk start states; "serial" (``triton_serial``) is "loop" with a forward in
which every thread scans 16 consecutive steps in registers (a quarter of the instructions per step).  The forward
saves the state at each chunk start (N floats per chunk and channel); the backward walks the chunks in reverse,
recomputes the states of a chunk from its saved start (an exclusive scan, so ``h_{t-1}`` is exact rather than
``(h_t - b_t) / a_t``), and runs the adjoint recurrence ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` as a reverse
associative scan, carrying ``g`` across chunks.  dB and dC sum over channels, so each program adds its block's share
atomically; the other parameter gradients are reduced per program and summed in PyTorch.

The same kernels run on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton is first
imported), which is how the test suite checks them without a GPU (slowly: use small shapes).
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from ssamba.models.scan import triton_tune

#: why an installed Triton failed to import (None: it imported, or is simply not installed)
IMPORT_ERROR: str | None = None
try:  # an optional extra (pip install ssamba[gpu]); CUDA builds of torch already ship it
    import triton
    import triton.language as tl
except Exception as exc:  # not installed, or a broken install raising at import (said on first CUDA use)
    triton = None
    tl = None
    if not (isinstance(exc, ModuleNotFoundError) and exc.name == "triton"):
        IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

#: The oldest Triton the kernels are compiled with (for sm_90, by tests/test_triton_compile.py run against it: 3.2,
#: 3.3, 3.5, 3.6 and 3.9 were).  An older one is not used: a kernel it cannot compile would fail mid-forward.
MIN_VERSION = (3, 2)


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as "3.2.0" or "3.3.0+git1234"."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


if triton is not None and _release(getattr(triton, "__version__", "0.0")) < MIN_VERSION:
    IMPORT_ERROR = (f"Triton {getattr(triton, '__version__', '(no version)')} is older than "
                    f"{'.'.join(map(str, MIN_VERSION))}, the oldest the kernels are tested with")
    triton = tl = None

CONFIG_VAR = "SSAMBA_TRITON_CONFIG"

#: Launch option of every kernel: contract multiplies and adds into FMAs.  The kernels are written for it (a state
#: update is a few FMAs); Triton 3.9 warns when it is left to its default, and 3.10 turns that default off.
FP_FUSION = {"enable_fp_fusion": True}


def available() -> bool:
    """Whether Triton can be imported."""
    return triton is not None


@functools.lru_cache(maxsize=1)
def interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1`` when it was imported; asked once:
    reading Triton's knobs costs microseconds, and every call of the kernel wrappers asks)."""
    if not available():
        return False
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4; older ones read the variable directly
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv`` for the host: Triton's is a constexpr function whose Python call costs ~4 us (a scan call
    asks several times, an SSAMBA forward ~360 times)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for the host, n >= 1 (see ``cdiv``)."""
    return 1 << max(0, n - 1).bit_length()


def supports(t: Tensor) -> bool:
    """CUDA tensors when Triton is installed; CPU tensors only in interpreter mode (tests)."""
    return available() and (t.is_cuda or (t.device.type == "cpu" and interpreted()))


ALGOS = ("tile", "loop", "chunked", "serial")


@dataclass(frozen=True)
class TritonConfig:
    """Launch shape and algorithm: channels per program, steps per chunk (both powers of two), warps per program;
    ``algo`` "tile" scans a (channels, states, time) tile, "loop" loops over the states (``triton_loop``), "chunked"
    is "loop" with a chunk-parallel forward (chunk start states first, then every chunk at once; same backward),
    "serial" is "loop" with a forward whose threads scan 16 consecutive steps each (``triton_serial``; one channel
    per program, ``chunk`` = 16 steps per thread, so 512 x num_warps fills the warps) and the loop backward at
    ``SERIAL_BACKWARD``'s launch shape.  ``stages`` > 1 ("serial" only) software-pipelines its per-state loads
    through shared memory (Triton's ``num_stages``); ``unroll`` 2 ("serial" only) scans two states per pass of its
    state loop (when their number is even), for the instruction-level parallelism that one warp per program lacks.
    "loop" is faster than "tile"; "tile" keeps no pre-gate output for the backward (one (B, D, L) float32 buffer
    less when training).

    The default was the fastest forward + backward of ``benchmarks/gpu_check.py``'s sweep on an H200 (B=2,
    d_inner=384, N=16, L=16384: 0.52 ms forward, 3.8 ms forward + backward; docs/bench/tiny-h200-triton-2/
    gpu_check.md).  "1,512,2,chunked" had the fastest forward there (0.46 ms) but a slower backward (5.4 ms): the
    sequential walk is not what limits the kernel, the per-step instruction count of the scan is.  "serial" came
    after that run and has not been timed on a GPU: compiled for sm_90 its state loop is 11-13 instructions per
    state update (10.6 as "1,512,1,serial,1,2") against the loop forward's 43 (``benchmarks/triton_ptx.py``).  On
    CUDA, unless a shape is set, each call shape is tuned between ``CANDIDATES`` (``launch_config``)."""

    block_d: int = 1
    chunk: int = 512
    num_warps: int = 4
    algo: Literal["tile", "loop", "chunked", "serial"] = "loop"
    stages: int = 1
    unroll: int = 1

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:  # the kernel table would run another algorithm for a misspelt one
            raise ValueError(f"algo must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        for name in ("block_d", "chunk", "num_warps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, got {value!r}")
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"stages must be a positive integer, got {self.stages!r}")
        if self.algo == "serial" and (self.block_d != 1 or self.chunk < 16):
            raise ValueError(f"algo 'serial' runs one channel per program and 16 steps per thread: block_d must be 1 "
                             f"and chunk at least 16, got block_d={self.block_d}, chunk={self.chunk}")
        if self.stages > 1 and self.algo != "serial":
            raise ValueError(f"stages > 1 pipelines the 'serial' forward's loads; algo {self.algo!r} has none")
        if self.unroll not in (1, 2) or isinstance(self.unroll, bool):
            raise ValueError(f"unroll must be 1 or 2 (states per pass of the serial forward's loop), "
                             f"got {self.unroll!r}")
        if self.unroll > 1 and self.algo != "serial":
            raise ValueError(f"unroll 2 interleaves two states of the 'serial' forward; algo {self.algo!r} has no such "
                             f"loop")

    @classmethod
    def parse(cls, text: str) -> "TritonConfig":
        """``"block_d,chunk,num_warps[,algo[,stages[,unroll]]]"``, e.g. from ``$SSAMBA_TRITON_CONFIG``."""
        fields = text.split(",")
        try:
            block_d, chunk, warps = (int(v) for v in fields[:3])
            numbers = [int(v) for v in fields[4:6]]  # stages, unroll
            if len(fields) not in (3, 4, 5, 6):
                raise ValueError
        except ValueError:
            raise ValueError(f"{CONFIG_VAR}={text!r}: expected 'block_d,chunk,num_warps[,algo[,stages[,unroll]]]' "
                             f"with integers for all but algo") from None
        try:
            return cls(block_d, chunk, warps, *fields[3:4], *numbers)
        except ValueError as exc:
            raise ValueError(f"{CONFIG_VAR}={text!r}: {exc}") from None

    def states_per_pass(self, d_state: int) -> int:
        """``unroll`` where the state count divides by it, else 1: the serial forward's UNROLL for ``d_state``."""
        return self.unroll if d_state % self.unroll == 0 else 1

    def spec(self) -> str:
        """The ``parse`` string of this config (``$SSAMBA_TRITON_CONFIG`` for a child process)."""
        tail = [self.stages, self.unroll] if self.unroll != 1 else [self.stages] if self.stages != 1 else []
        return ",".join(str(v) for v in (self.block_d, self.chunk, self.num_warps, self.algo, *tail))


#: The backward of the "serial" algorithm: the loop backward at its fastest launch shape on an H200 (3.3 ms of the
#: default's 3.8 ms forward + backward at B=2, d_inner=384, L=16384), whatever the serial forward's chunk.
SERIAL_BACKWARD = TritonConfig(1, 512, 4, "loop")
#: Floats of scratch per state for each program of the "serial" forward (``triton_serial._scan_channel``'s
#: ``carry_row``): two slots of the state carried between chunks, then the channel's A times log2(e).
SERIAL_SCRATCH_PER_STATE = 3


def serial_scratch(programs: tuple[int, ...], d_state: int, device: torch.device) -> Tensor:
    """The "serial" forward's scratch, one row per program (need not be initialised); the kernels take the rows'
    stride as ``s_carry``."""
    return torch.empty(*programs, SERIAL_SCRATCH_PER_STATE * d_state, dtype=torch.float32, device=device)


#: What the backend tunes between on a GPU (``launch_config``), the default first (it wins ties).  The "serial"
#: forward has 11-13 instructions per state update on sm_90 against the loop forward's 43, but has not been timed on
#: a GPU; with one warp per program it depends on enough programs to hide its latency, hence the wider ones.  All of
#: them train with the default's backward (``SERIAL_BACKWARD``), so a training shape compares forwards.
CANDIDATES = (TritonConfig(), TritonConfig(1, 512, 1, "serial", unroll=2), TritonConfig(1, 1024, 2, "serial", unroll=2),
              TritonConfig(1, 2048, 4, "serial", unroll=2))

_config_override: TritonConfig | None = None


def set_config(config: TritonConfig | None) -> None:
    """Choose the launch shape for the whole process, untuned (``None``: ``$SSAMBA_TRITON_CONFIG``'s, else tuned)."""
    global _config_override
    _config_override = config


def explicit_config() -> TritonConfig | None:
    """``set_config``'s launch shape, else ``$SSAMBA_TRITON_CONFIG``'s; None when neither chose one."""
    if _config_override is not None:
        return _config_override
    text = os.environ.get(CONFIG_VAR)
    return _parsed(text) if text else None


def launch_shapes_used() -> str:
    """For reports: the launch shape set (``explicit_config``), else the shapes tuning chose in this process, else
    the default's."""
    explicit = explicit_config()
    if explicit is not None:
        return f"set {explicit.spec()}"
    tuned = sorted({d.choice.spec() for d in triton_tune.decisions().values()})
    return f"tuned {', '.join(tuned)}" if tuned else f"default {CANDIDATES[0].spec()}"


@functools.lru_cache(maxsize=16)
def _parsed(text: str) -> TritonConfig:
    """Parsed once per value: every scan call asks (48 per SSAMBA forward pass)."""
    return TritonConfig.parse(text)


class ShapeKey(NamedTuple):
    """What a tuned launch shape is remembered by (``triton_tune``): the batch and the length rounded up to powers
    of two (the length to at least 256)."""

    mode: str  # "inference", "training" (a forward saving for the backward), "pair" (a mixer's two directions)
    device: str
    dtype: torch.dtype
    batch: int
    dim: int
    d_state: int
    rank: int  # dt_proj's rank when delta comes as its factors, else 0
    length: int

    @classmethod
    def of(cls, mode: str, x: Tensor, dim: int, d_state: int, rank: int) -> "ShapeKey":
        """The key of a call on ``x`` (B, ., L)."""
        return cls(mode, str(x.device), x.dtype, next_power_of_2(x.shape[0]), dim, d_state, rank,
                   next_power_of_2(max(256, x.shape[-1])))


#: The made-up inputs a shape is timed on hold at most this many elements per (B, D, L) tensor (256 MiB in float32):
#: a larger batch is timed on fewer items, which keep the GPU as busy, rather than doubling a large call's memory.
TUNE_ELEMENTS = 2**26


def tuning_batch(batch: int, dim: int, length: int) -> int:
    """The batch of the made-up inputs a (batch, dim, length) call is timed on (see ``TUNE_ELEMENTS``)."""
    return max(1, min(batch, TUNE_ELEMENTS // max(1, dim * length)))


def launch_config(key: ShapeKey, device: torch.device,
                  prepare: Callable[[], Callable[[TritonConfig], object]]) -> TritonConfig:
    """The launch shape of a call: ``explicit_config()`` if any, else the fastest of ``CANDIDATES`` for ``key``
    (timed on its first call through ``prepare()``'s runner, where ``triton_tune.enabled``), else the default."""
    explicit = explicit_config()
    if explicit is not None:
        return explicit
    choice = triton_tune.cached(key)
    if choice is not None:
        return choice
    if not triton_tune.enabled(device):
        return CANDIDATES[0]
    return triton_tune.fastest(key, CANDIDATES, prepare, device)


# --------------------------------------------------------------------------------------------------------- kernels
# Written as plain functions and jitted on first use, so that importing this module never needs Triton.

if triton is not None:

    @triton.jit
    def _combine(a_l, b_l, a_r, b_r):
        """(a_l, b_l) then (a_r, b_r): h -> a_r (a_l h + b_l) + b_r."""
        return a_l * a_r, a_r * b_l + b_r

    @triton.jit
    def _chunk_steps(ci, offs_t, length, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
        """(memory positions, mask) of chunk ``ci`` of the scan, always in ascending memory order.

        A reverse scan (REVERSE) walks time from the last step to the first: its chunk ``ci`` holds the steps
        ``length - (ci + 1) * CHUNK .. length - ci * CHUNK - 1`` in memory order and is scanned with
        ``associative_scan(reverse=True)``, so its start is the highest index and its end index 0.  Reading memory
        ascending (rather than through negated strides) keeps the time axis contiguous for the compiler (vector loads,
        the forward layout): with negated strides the loop forward compiled (sm_90) to 3x the layout conversions and
        shuffles."""
        if REVERSE:
            t = length - (ci + 1) * CHUNK + offs_t
            return t, t >= 0
        t = ci * CHUNK + offs_t
        return t, t < length

    @triton.jit
    def _channel_block(dim, d_state, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        """The program's batch element and block of channels (program axes 0 and 1), as every kernel starts:
        ``(pid_b, offs_d, offs_n, mask_d, mask_dn)``, mask_dn for the block's (channel, state) tile."""
        pid_b = tl.program_id(0)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        mask_d = offs_d < dim
        return pid_b, offs_d, offs_n, mask_d, mask_d[:, None] & (offs_n < d_state)[None, :]

    @triton.jit
    def _channel_values(ptr, offs_d, mask_d, PRESENT: tl.constexpr, BLOCK_D: tl.constexpr):
        """A per-channel parameter of the block (D, the delta bias) as float32; zeros when the call has none."""
        values = tl.zeros((BLOCK_D,), dtype=tl.float32)
        if PRESENT:
            values = tl.load(ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        return values

    @triton.jit
    def _delta(pre, SOFTPLUS: tl.constexpr):
        """The scan's step size from the float32 pre-activation ``delta + bias``: its softplus, or itself."""
        if SOFTPLUS:
            return tl.where(pre <= 20.0, tl.log(1.0 + tl.exp(pre)), pre)
        return pre

    @triton.jit
    def _load_delta(ptrs, mask, bias, SOFTPLUS: tl.constexpr):
        """(delta, pre): ``_delta`` of the loaded tile, 0 where masked (a step outside the sequence is the
        identity, a = 1 and b = 0), and the pre-softplus value (its sigmoid is softplus' derivative).  ``bias``
        broadcasts against the tile (a channel column)."""
        pre = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) + bias
        return tl.where(mask, _delta(pre, SOFTPLUS), 0.0), pre


def _fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr,
    dim, length, d_state, n_chunks,
    s_xb, s_xd, s_xl, s_bb, s_bn, s_bl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_b, offs_d, offs_n, mask_d, mask_dn = _channel_block(dim, d_state, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    mask_n = offs_n < d_state
    log2e = 1.4426950408889634
    A2 = tl.load(A_ptr + offs_d[:, None] * d_state + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32) * log2e
    Dv = _channel_values(D_ptr, offs_d, mask_d, HAS_D, BLOCK_D)
    bias = _channel_values(bias_ptr, offs_d, mask_d, HAS_BIAS, BLOCK_D)
    state_off = ((pid_b * dim + offs_d[:, None]) * n_chunks) * d_state + offs_n[None, :]  # + ci * d_state
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for ci in range(n_chunks):
        t = ci * CHUNK + offs_t
        mask_t = t < length
        mask_x = mask_d[:, None] & mask_t[None, :]
        x_off = pid_b * s_xb + offs_d[:, None] * s_xd + t[None, :] * s_xl
        u = tl.load(u_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
        dl, _ = _load_delta(dl_ptr + x_off, mask_x, bias[:, None], SOFTPLUS)
        bc_off = pid_b * s_bb + offs_n[:, None] * s_bn + t[None, :] * s_bl
        mask_bc = mask_n[:, None] & mask_t[None, :]
        Bt = tl.load(B_ptr + bc_off, mask=mask_bc, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_off, mask=mask_bc, other=0.0).to(tl.float32)
        if SAVE_STATES:
            tl.store(states_ptr + state_off + ci * d_state, h, mask=mask_dn)
        dA = tl.exp2(dl[:, None, :] * A2[:, :, None])
        dBu = (dl * u)[:, None, :] * Bt[None, :, :]
        pa, pb = tl.associative_scan((dA, dBu), axis=2, combine_fn=_combine)
        hs = pb + pa * h[:, :, None]
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        if HAS_D:
            y = y + Dv[:, None] * u
        if HAS_Z:
            zt = tl.load(z_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
            y = y * zt * tl.sigmoid(zt)
        tl.store(out_ptr + x_off, y, mask=mask_x)
        h = tl.sum(tl.where((offs_t == CHUNK - 1)[None, None, :], hs, 0.0), axis=2)


def _bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr,
    du_ptr, ddl_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, length, d_state, n_chunks,
    s_xb, s_xd, s_xl, s_bb, s_bn, s_bl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_b, offs_d, offs_n, mask_d, mask_dn = _channel_block(dim, d_state, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, CHUNK)
    mask_n = offs_n < d_state
    log2e = 1.4426950408889634
    A = tl.load(A_ptr + offs_d[:, None] * d_state + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * log2e
    Dv = _channel_values(D_ptr, offs_d, mask_d, HAS_D, BLOCK_D)
    bias = _channel_values(bias_ptr, offs_d, mask_d, HAS_BIAS, BLOCK_D)
    state_off = ((pid_b * dim + offs_d[:, None]) * n_chunks) * d_state + offs_n[None, :]
    g = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # adjoint of the state after this chunk
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(n_chunks):
        ci = n_chunks - 1 - i
        t0 = ci * CHUNK
        t = t0 + offs_t
        mask_t = t < length
        mask_x = mask_d[:, None] & mask_t[None, :]
        x_off = pid_b * s_xb + offs_d[:, None] * s_xd + t[None, :] * s_xl
        bc_off = pid_b * s_bb + offs_n[:, None] * s_bn + t[None, :] * s_bl
        mask_bc = mask_n[:, None] & mask_t[None, :]
        u = tl.load(u_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
        dl, dl_pre = _load_delta(dl_ptr + x_off, mask_x, bias[:, None], SOFTPLUS)
        Bt = tl.load(B_ptr + bc_off, mask=mask_bc, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_off, mask=mask_bc, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)

        # h_{t-1} by an exclusive scan: step t of the chunk scans the inputs of step t-1 (identity at the start)
        mask_p = mask_d[:, None] & ((offs_t >= 1) & (t - 1 < length))[None, :]
        u_p = tl.load(u_ptr + x_off - s_xl, mask=mask_p, other=0.0).to(tl.float32)
        dl_p, _ = _load_delta(dl_ptr + x_off - s_xl, mask_p, bias[:, None], SOFTPLUS)
        mask_bp = mask_n[:, None] & ((offs_t >= 1) & (t - 1 < length))[None, :]
        B_p = tl.load(B_ptr + bc_off - s_bl, mask=mask_bp, other=0.0).to(tl.float32)
        h_in = tl.load(states_ptr + state_off + ci * d_state, mask=mask_dn, other=0.0)
        pa, pb = tl.associative_scan(
            (tl.exp2(dl_p[:, None, :] * A2[:, :, None]), (dl_p * u_p)[:, None, :] * B_p[None, :, :]),
            axis=2, combine_fn=_combine,
        )
        h_prev = pb + pa * h_in[:, :, None]
        dA = tl.exp2(dl[:, None, :] * A2[:, :, None])
        h = dA * h_prev + (dl * u)[:, None, :] * Bt[None, :, :]

        dy = dout
        if HAS_Z:
            zt = tl.load(z_ptr + x_off, mask=mask_x, other=0.0).to(tl.float32)
            y = tl.sum(h * Ct[None, :, :], axis=1) + Dv[:, None] * u
            sz = tl.sigmoid(zt)
            tl.store(dz_ptr + x_off, dout * y * sz * (1.0 + zt * (1.0 - sz)), mask=mask_x)
            dy = dout * zt * sz
        dD_acc += tl.sum(dy * u, axis=1)

        # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, a reverse scan whose last step reaches into the next chunk
        mask_nx = mask_d[:, None] & (t + 1 < length)[None, :]
        dl_n, _ = _load_delta(dl_ptr + x_off + s_xl, mask_nx, bias[:, None], SOFTPLUS)
        ga, gb = tl.associative_scan(
            (tl.exp2(dl_n[:, None, :] * A2[:, :, None]), Ct[None, :, :] * dy[:, None, :]),
            axis=2, combine_fn=_combine, reverse=True,
        )
        gs = gb + ga * g[:, :, None]

        gB = tl.sum(gs * Bt[None, :, :], axis=1)
        du = gB * dl + Dv[:, None] * dy
        decay_term = gs * dA * h_prev  # d h_t / d a_t contributions
        ddl = gB * u + tl.sum(decay_term * A[:, :, None], axis=1)
        dA_acc += tl.sum(decay_term * dl[:, None, :], axis=2)
        if SOFTPLUS:
            ddl = ddl * tl.where(dl_pre <= 20.0, tl.sigmoid(dl_pre), 1.0)
        ddl = tl.where(mask_x, ddl, 0.0)
        dbias_acc += tl.sum(ddl, axis=1)
        tl.store(du_ptr + x_off, du, mask=mask_x)
        tl.store(ddl_ptr + x_off, ddl, mask=mask_x)
        out_bc = (pid_b * d_state + offs_n[:, None]) * length + t[None, :]
        tl.atomic_add(dB_ptr + out_bc, tl.sum(gs * (dl * u)[:, None, :], axis=0), mask=mask_bc)
        tl.atomic_add(dC_ptr + out_bc, tl.sum(h * dy[:, None, :], axis=0), mask=mask_bc)
        g = tl.sum(tl.where((offs_t == 0)[None, None, :], gs, 0.0), axis=2)
    tl.store(dA_ptr + (pid_b * dim + offs_d[:, None]) * d_state + offs_n[None, :], dA_acc, mask=mask_dn)
    tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


def _kernel(name: str, algo: str):
    """The jitted kernel ``name`` ("fwd", "bwd", "chunk_end", "chunk_carry") of an algorithm ("chunked" runs the
    "loop" kernels, "serial" its own forward and the "loop" backward)."""
    if algo == "serial" and name == "fwd":
        return _jitted(name, "serial")
    return _jitted(name, "tile" if algo == "tile" else "loop")


@functools.lru_cache(maxsize=None)
def _jitted(name: str, family: str):
    if family == "serial":
        from ssamba.models.scan import triton_serial

        return triton.jit(triton_serial.fwd_serial_kernel)
    if family == "loop":
        from ssamba.models.scan import triton_loop

        return triton.jit({"fwd": triton_loop.fwd_loop_kernel, "bwd": triton_loop.bwd_loop_kernel,
                           "chunk_end": triton_loop.chunk_end_kernel,
                           "chunk_carry": triton_loop.chunk_carry_kernel}[name])
    return triton.jit({"fwd": _fwd_kernel, "bwd": _bwd_kernel}[name])


# ------------------------------------------------------------------------------------------------------ autograd
_MAX_GRID_Z = 65535  # CUDA's limit on the third grid axis (chunks of the chunk-parallel forward)


def _launch_shape(config: TritonConfig, batch: int, dim: int, length: int) -> tuple[tuple[int, int], int]:
    chunk = min(config.chunk, max(1, next_power_of_2(length)))
    return (batch, cdiv(dim, config.block_d)), chunk


def _at(t: Tensor, reverse: bool) -> Tensor:
    """The pointer a kernel walks the time axis from: the last step when scanning backwards (with a negated
    time stride), so a reverse scan needs no flipped copies."""
    return t[..., t.shape[-1] - 1:] if reverse else t


def _time_strides(x: Tensor, b: Tensor, reverse: bool) -> tuple[int, ...]:
    sign = -1 if reverse else 1
    return x.stride(0), x.stride(1), sign * x.stride(2), b.stride(0), b.stride(1), sign * b.stride(2)


# Sequences are padded to a multiple of this many steps (see _padded).
ALIGN = 16

#: The kernels compute element offsets in 32-bit integers, as Triton types integer arguments below 2**31: a call
#: whose tensors reach further is split along the batch (``batch_slices``).
MAX_OFFSET = 2**31 - 1


def batch_slices(batch: int, per_item: int, what: str) -> list[slice]:
    """Slices of the batch whose element offsets stay within ``MAX_OFFSET`` (``per_item``: the elements one batch
    item spans, batch strides included); all of it in one slice when it fits."""
    if per_item > MAX_OFFSET:
        raise ValueError(f"{what}: one batch item spans {per_item} elements, beyond the 2**31 - 1 that the Triton "
                         f"kernels' 32-bit offsets reach; use a shorter sequence or fewer channels")
    step = max(1, MAX_OFFSET // per_item)
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


def _f32(t: Tensor) -> Tensor:
    """``t.float().contiguous()``, tested in Python first: each would be a dispatched op even when a no-op."""
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def _padded(t: Tensor | None, length: int, fill: float) -> Tensor | None:
    """``t`` (B, C, L) as a contiguous (B, C, length) tensor, the extra steps set to ``fill``."""
    if t is None or (t.shape[-1] == length and t.is_contiguous()):
        return t
    out = t.new_empty(*t.shape[:-1], length)
    out[..., :t.shape[-1]].copy_(t)
    out[..., t.shape[-1]:].fill_(fill)
    return out


def wants_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd would record a call on these tensors: else the wrappers launch the kernels directly, as
    ``autograd.Function.apply`` costs more host time than a launch (a GPU at short sequences waits on the host)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _SelectiveScan(torch.autograd.Function):
    """The scan on sequences padded to a multiple of ALIGN steps with identity steps (delta 0 after the softplus,
    u, z, B, C 0: the state passes through unchanged, nothing flows back).  Triton specialises integers divisible by
    16, so the padded length and row strides let it prove 16-byte alignment and whole vectors in bounds: SSAMBA's
    sequences (patches + a cls token) never are, and a kernel that cannot prove it compiles (sm_90) to scalar loads
    and 3x the layout conversions and shuffles (tests/test_triton_compile.py).  Padding costs a copy of u, delta, z
    (and the output back) when the length is not a multiple of ALIGN; the mixer pads its input once instead
    (``BiMambaMixer._forward_flip_free``), so its scans copy nothing."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, config):
        return _SelectiveScan.run(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, config,
                                  save=any(ctx.needs_input_grad))

    @staticmethod
    def run(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, config: TritonConfig, save: bool,
            proj: tuple[Tensor, Tensor] | None = None, valid_length: int = 0):
        """The forward launches at launch shape ``config``; with ``save``, what the backward needs goes on ``ctx``
        (None for inference).  ``proj = (weight, dt)`` (the serial forward, inference, an aligned length, dt with B's
        strides): ``delta`` is None and the kernel computes it, identity steps from ``valid_length`` on."""
        batch, dim, true_length = u.shape
        length = -(-true_length // ALIGN) * ALIGN
        d_state = A.shape[1]
        u_ = _padded(u, length, 0.0)
        dl_ = _padded(delta, length, float("-inf") if delta_softplus else 0.0)
        z_ = _padded(z, length, 0.0)
        if length == true_length and B.stride() == C.stride():
            B_, C_ = B, C  # read in place (the mixer's views of one projection share strides)
        else:
            B_, C_ = _padded(B.contiguous(), length, 0.0), _padded(C.contiguous(), length, 0.0)
        A_ = _f32(A)
        grid, chunk = _launch_shape(config, batch, dim, length)
        n_chunks = cdiv(length, chunk)
        backward = SERIAL_BACKWARD if config.algo == "serial" else config
        extra = {}
        f32 = dict(dtype=torch.float32, device=u.device)
        pointers = []  # the serial kernel's: scratch for the state carried between chunks, dt, W_dt
        scratch_stride = []  # and its scratch rows' stride
        if config.algo == "serial":  # it saves the states at the start of the backward's chunks
            save_every = _launch_shape(backward, batch, dim, length)[1]
            n_chunks = cdiv(length, save_every)
            extra.update(STAGES=config.stages, SAVE_EVERY=save_every,
                         UNROLL=config.states_per_pass(d_state),
                         DT_RANK=0 if proj is None else proj[0].shape[1])
            carry = serial_scratch((batch, dim), d_state, u.device)
            pointers += [carry, *(proj[::-1] if proj else (A_, A_))]
            scratch_stride = [carry.stride(1)]
        else:
            extra.update(BLOCK_D=config.block_d, BLOCK_N=next_power_of_2(d_state))
        out = torch.empty_like(u_)
        # "chunked": every chunk's start state first (two small launches), then all chunks at once
        parallel = config.algo == "chunked" and 1 < n_chunks <= _MAX_GRID_Z
        states = torch.empty(batch, dim, n_chunks, d_state, **f32) if (save or parallel) else A_
        loop = config.algo != "tile"  # the loop kernels' family: "loop", "chunked", "serial"
        ypre = torch.empty(u_.shape, **f32) if (loop and save and z is not None) else None
        dummy = A_
        r = bool(reverse)
        block_n = next_power_of_2(d_state)
        # The loop kernels read a reverse scan in ascending memory order (REVERSE); the tile kernels walk it
        # through negated strides from the last step (_at).
        native = loop and r
        rv = r and not native
        if parallel:
            dsum = torch.empty(batch, dim, n_chunks, **f32)
            _kernel("chunk_end", config.algo)[grid + (n_chunks,)](
                u_, dl_, A_, B_, dummy if delta_bias is None else _f32(delta_bias), states, dsum,
                dim, length, d_state, n_chunks, *_time_strides(u_, B_, False),
                HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), REVERSE=r,
                BLOCK_D=config.block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=config.num_warps, **FP_FUSION,
            )
            carry_d = min(32, next_power_of_2(dim))
            _kernel("chunk_carry", config.algo)[(batch, cdiv(dim, carry_d))](
                states, dsum, A_, dim, d_state, n_chunks, BLOCK_D=carry_d, BLOCK_N=block_n, num_warps=2,
                **FP_FUSION,
            )
            grid = grid + (n_chunks,)
            extra["CHUNK_PARALLEL"] = True
        if native:
            extra["REVERSE"] = True
        _kernel("fwd", config.algo)[grid](
            _at(u_, rv), A_ if dl_ is None else _at(dl_, rv), A_, _at(B_, rv), _at(C_, rv),
            dummy if D is None else _f32(D),
            dummy if z_ is None else _at(z_, rv), dummy if delta_bias is None else _f32(delta_bias),
            _at(out, rv), states,
            *([dummy if ypre is None else _at(ypre, rv)] if loop else []), *pointers,
            dim, length, *([valid_length if proj else length] if config.algo == "serial" else []), d_state, n_chunks,
            *_time_strides(u_, B_, rv), *scratch_stride,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
            SAVE_STATES=save, CHUNK=chunk, num_warps=config.num_warps, **extra, **FP_FUSION,
        )
        if save:
            ctx.save_for_backward(u_, dl_, A_, B_, C_, D, z_, delta_bias, states, ypre)
            ctx.delta_softplus = bool(delta_softplus)
            ctx.reverse = r
            ctx.config = backward
            ctx.dtypes = (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype)
            ctx.true_length = true_length
        return out if length == true_length else out[..., :true_length].contiguous()

    @staticmethod
    def backward(ctx, dout):
        u, dl, A, B, C, D, z, delta_bias, states, ypre = ctx.saved_tensors
        batch, dim, length = u.shape  # the padded length
        true_length = ctx.true_length
        d_state = A.shape[1]
        config = ctx.config
        grid, chunk = _launch_shape(config, batch, dim, length)
        n_chunks = states.shape[2]
        f32 = dict(dtype=torch.float32, device=u.device)
        dout = _padded(dout, length, 0.0).contiguous()
        du = torch.empty(u.shape, **f32)
        ddl = torch.empty(u.shape, **f32)
        dz = torch.empty(u.shape, **f32) if z is not None else None
        dA = torch.empty(batch, dim, d_state, **f32)
        dB = torch.zeros(batch, d_state, length, **f32)
        dC = torch.zeros(batch, d_state, length, **f32)
        dD = torch.empty(batch, dim, **f32)
        dbias = torch.empty(batch, dim, **f32)
        dummy = A
        native = config.algo != "tile" and ctx.reverse  # the loop backward reads a reverse scan ascending
        r = ctx.reverse and not native
        _kernel("bwd", config.algo)[grid](
            _at(u, r), _at(dl, r), A, _at(B, r), _at(C, r), dummy if D is None else _f32(D),
            dummy if z is None else _at(z, r), dummy if delta_bias is None else _f32(delta_bias),
            _at(dout, r), states, *([dummy if ypre is None else _at(ypre, r)] if config.algo != "tile" else []),
            _at(du, r), _at(ddl, r), dummy if dz is None else _at(dz, r), dA, dB, dC, dD, dbias,
            dim, length, d_state, n_chunks, *_time_strides(u, B, r),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.delta_softplus,
            BLOCK_D=config.block_d, BLOCK_N=next_power_of_2(d_state), CHUNK=chunk,
            num_warps=config.num_warps, **({"REVERSE": True} if native else {}), **FP_FUSION,
        )
        if r:  # the tile kernels accumulate dB and dC by step of the scan, which runs backwards in time
            dB, dC = dB.flip(-1), dC.flip(-1)
        u_t, dl_t, A_t, B_t, C_t = ctx.dtypes
        cut = (lambda t: t) if length == true_length else (lambda t: t[..., :true_length])  # noqa: E731
        grads = [cut(du).to(u_t), cut(ddl).to(dl_t), dA.sum(0).to(A_t), cut(dB).to(B_t), cut(dC).to(C_t),
                 None if D is None else dD.sum(0).to(D.dtype),
                 None if z is None else cut(dz).to(z.dtype),
                 None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype), None, None, None]
        return tuple(grads)


def selective_scan_triton(u: Tensor, delta: Tensor | None, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None,
                          delta_softplus: bool = False, reverse: bool = False, *,
                          delta_proj: tuple[Tensor, Tensor] | None = None, valid_length: int | None = None,
                          config: TritonConfig | None = None) -> Tensor:
    """The "triton" backend of ``selective_scan`` (mamba_ssm layout; float32 arithmetic, output in u's dtype);
    ``reverse=True`` scans from the last step to the first.

    ``delta_proj = (weight, dt)`` gives ``delta`` (then None) as ``weight @ dt``, (D, R) @ (B, R, L), with the steps
    from ``valid_length`` on identity steps (delta 0 after the bias and the softplus: the mixer's padding): the
    mixer's dt_proj.  The "serial" forward computes it inside the kernel when nothing wants a gradient (its output,
    one (B, D, L) tensor, is then never written or read); otherwise it is formed here first.

    ``config``: the launch shape; by default ``launch_config``'s (explicit, else tuned on CUDA, else the default)."""
    if triton is None:
        raise RuntimeError("the triton scan backend needs Triton: pip install 'ssamba[gpu]' (or a CUDA torch)")
    if not supports(u):
        raise RuntimeError(f"the triton scan backend runs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1 set "
                           f"before Triton is imported); got a {u.device.type} tensor")
    batch, dim, length = u.shape
    if delta_proj is not None and delta is not None:
        raise ValueError("selective_scan_triton: give delta or delta_proj, not both")
    dt = delta if delta_proj is None else delta_proj[1]
    if delta_proj is not None and (delta_proj[0].shape != (dim, dt.shape[1])
                                   or dt.shape != (batch, dt.shape[1], length)):
        raise ValueError(f"delta_proj: weight (D, R) and dt (B, R, L) for u {tuple(u.shape)}, got "
                         f"{tuple(delta_proj[0].shape)} and {tuple(dt.shape)}")
    if length == 0:
        return u.new_zeros(u.shape)
    padded = -(-length // ALIGN) * ALIGN
    per_item = max([dim * padded, B.shape[1] * padded, dim * SERIAL_SCRATCH_PER_STATE * A.shape[1]]
                   + [t.stride(0) for t in (u, dt, z, B, C) if t is not None])
    parts = batch_slices(batch, per_item, f"selective scan of {tuple(u.shape)}")
    train = wants_grad(u, dt, A, B, C, D, z, delta_bias, *(delta_proj or ()))
    if config is None:
        rank = 0 if delta_proj is None else delta_proj[0].shape[1]
        config = launch_config(
            ShapeKey.of("training" if train else "inference", u, dim, A.shape[1], rank), u.device,
            lambda: _scan_workload(u.device, u.dtype, tuning_batch(batch, dim, length), dim, A.shape[1], rank, length,
                                   train))
    if delta_proj is not None:
        weight = delta_proj[0]
        valid = length if valid_length is None else valid_length
        if (len(parts) == 1 and config.algo == "serial" and padded == length and not train
                and dt.stride() == B.stride() == C.stride()):
            return _SelectiveScan.run(None, u, None, A, B, C, D, z, delta_bias, delta_softplus, reverse, config,
                                      save=False, proj=(_f32(weight), dt), valid_length=valid)
        delta = _delta_from_factors(weight, dt, valid, delta_bias, delta_softplus)
    if train:
        scan = _SelectiveScan.apply
    else:  # inference: the launches without autograd.Function.apply's host time
        scan = functools.partial(_SelectiveScan.run, None, save=False)
    if len(parts) == 1:
        return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, config)
    return torch.cat([scan(u[p], delta[p], A, B[p], C[p], D, None if z is None else z[p], delta_bias,
                           delta_softplus, reverse, config) for p in parts])


class MadeUp:
    """Made-up inputs for timing launch shapes, from a generator of their own (the process' random state is the
    user's): ``normal`` in ``dtype`` (activations), ``uniform`` in float32 (parameters)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.gen = torch.Generator(device=device).manual_seed(0)

    def normal(self, *shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=self.gen, device=self.device) * scale).to(self.dtype)

    def uniform(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.gen, device=self.device)


def _scan_workload(device: torch.device, dtype: torch.dtype, batch: int, dim: int, d_state: int, rank: int,
                   length: int, train: bool) -> Callable[[TritonConfig], object]:
    """``run(config)``: one ``selective_scan_triton`` call of the given shape on made-up inputs, laid out as the
    mixer's (dt, B and C rows of one projection; delta as dt_proj's factors when ``rank``), with inputs that want
    gradients when ``train``.  What ``launch_config`` times."""
    made_up = MadeUp(device, dtype)
    randn = made_up.normal
    u, z = randn(batch, dim, length), randn(batch, dim, length)
    proj = randn(batch, rank + 2 * d_state, length)
    dt, b, c = proj.split([rank, d_state, d_state], dim=1)
    a = -0.5 - made_up.uniform(dim, d_state)
    d_skip, bias = torch.ones(dim, device=device), torch.full((dim,), -2.0, device=device)
    factors = (randn(dim, rank, scale=rank ** -0.5), dt) if rank else None
    delta = None if rank else randn(batch, dim, length)
    u.requires_grad_(train)

    def run(config: TritonConfig) -> Tensor:
        with torch.set_grad_enabled(train):
            return selective_scan_triton(u, delta, a, b, c, d_skip, z, bias, True, False, delta_proj=factors,
                                         valid_length=length, config=config)
    return run


def _delta_from_factors(weight: Tensor, dt: Tensor, valid: int, delta_bias: Tensor | None,
                        softplus: bool) -> Tensor:
    """``weight @ dt`` with identity steps (delta 0 after the bias and the softplus) from ``valid`` on, in dt's
    dtype as the mixer's matmul would run under autocast (its caller disables autocast for the scan)."""
    weight = weight if weight.dtype == dt.dtype else weight.to(dt.dtype)
    delta = torch.bmm(weight.expand(dt.shape[0], -1, -1), dt)
    length = delta.shape[-1]
    if valid < length:
        tail = delta.narrow(-1, valid, length - valid)
        if softplus:
            tail.fill_(float("-inf"))
        else:
            tail.fill_(0.0)
            if delta_bias is not None:
                tail -= delta_bias.to(tail.dtype)[:, None]
    return delta
