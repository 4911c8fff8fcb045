"""The Triton kernels compile for real GPUs, checked without one: Triton lowers them to PTX and cubin for sm_90
(H100/H200) and sm_80 (A100) on any machine.  The interpreter that runs them in the other tests is more permissive
than the compiler (types of loop-carried values, constexpr handling), so this is what catches a kernel that would
only fail on a GPU.  Also pinned: a reverse scan compiles like a forward one (reading memory ascending with a
reverse associative scan), since the negated-stride version compiled to 3x the layout conversions and shuffles.

The compiler runs in a subprocess: this test session imported Triton in interpreter mode (conftest), in which
``triton.jit`` makes interpreted functions that cannot be compiled.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ssamba.models.scan import triton_ops

pytestmark = pytest.mark.skipif(not triton_ops.available(),
                                reason="Triton is not installed (pip install 'ssamba[gpu]')")

COMPILE = r'''
import json, re, subprocess, sys
from ssamba.models.scan import triton_conv, triton_loop, triton_norms, triton_ops, triton_pair, triton_serial
from ssamba.models.scan.triton_compile import compile_for, state_loop

SCAN = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BLOCK_D=1, BLOCK_N=16, CHUNK=512)
KERNELS = {}
for rev in (False, True):
    KERNELS[f"fwd-reverse{rev}"] = (triton_loop.fwd_loop_kernel, dict(
        SCAN, SAVE_STATES=False, CHUNK_PARALLEL=False, REVERSE=rev))
    KERNELS[f"fwd-saving-chunk-parallel-reverse{rev}"] = (triton_loop.fwd_loop_kernel, dict(
        SCAN, SAVE_STATES=True, CHUNK_PARALLEL=True, REVERSE=rev))
    KERNELS[f"bwd-reverse{rev}"] = (triton_loop.bwd_loop_kernel, dict(SCAN, REVERSE=rev))
    SERIAL = dict(SCAN, REVERSE=rev, SAVE_EVERY=512, UNROLL=1, DT_RANK=0)
    del SERIAL["BLOCK_D"], SERIAL["BLOCK_N"]
    KERNELS[f"serial-reverse{rev}"] = (triton_serial.fwd_serial_kernel, dict(
        SERIAL, SAVE_STATES=False, CHUNK=1024, STAGES=1))
    KERNELS[f"serial-unroll2-reverse{rev}"] = (triton_serial.fwd_serial_kernel, dict(
        SERIAL, SAVE_STATES=False, CHUNK=512, STAGES=1, UNROLL=2))
    KERNELS[f"serial-dt-proj-reverse{rev}"] = (triton_serial.fwd_serial_kernel, dict(
        SERIAL, SAVE_STATES=False, CHUNK=512, STAGES=1, UNROLL=2, DT_RANK=12))
    KERNELS[f"serial-saving-pipelined-reverse{rev}"] = (triton_serial.fwd_serial_kernel, dict(
        SERIAL, SAVE_STATES=True, CHUNK=2048, STAGES=2))
    KERNELS[f"chunk-end-reverse{rev}"] = (triton_loop.chunk_end_kernel, dict(
        HAS_BIAS=True, SOFTPLUS=True, REVERSE=rev, BLOCK_D=1, BLOCK_N=16, CHUNK=512))
    KERNELS[f"conv-backwards{rev}"] = (triton_conv.conv_silu_kernel, dict(
        K=4, BACKWARDS=rev, HAS_BIAS=True, BLOCK_E=8, BLOCK_L=256))
KERNELS["conv-pair"] = (triton_conv.conv_silu_pair_kernel, dict(K=4, BLOCK_E=8, BLOCK_L=256))
KERNELS["serial-pair"] = (triton_pair.fwd_serial_pair_kernel, dict(CHUNK=512, STAGES=1, UNROLL=2, DT_RANK=12))
KERNELS["chunk-carry"] = (triton_loop.chunk_carry_kernel, dict(BLOCK_D=32, BLOCK_N=16))
KERNELS["add-norms"] = (triton_norms.add_norms_kernel, dict(HAS_PREV=True, HAS_H2=True, NORMS=2, BLOCK_R=16,
                                                           BLOCK_D=256))
KERNELS["tile-fwd"] = (triton_ops._fwd_kernel, dict(SCAN, SAVE_STATES=True, BLOCK_D=2, CHUNK=32))
KERNELS["tile-bwd"] = (triton_ops._bwd_kernel, dict(SCAN, BLOCK_D=2, CHUNK=32))

def summary(name, fn, flags, arch):
    serial = fn in (triton_serial.fwd_serial_kernel, triton_pair.fwd_serial_pair_kernel)
    warps = flags["CHUNK"] // 512 if serial else 4  # serial: 32 rows of 16 steps per warp
    ir, ptx, cubin = compile_for(fn, flags, arch=arch, num_warps=warps)
    info = {"entry": ".entry" in ptx, "cubin": bool(cubin), "convert_layout": ir.count("convert_layout"),
            "st_shared": ptx.count("st.shared"), "vector_loads": ptx.count("ld.global.v4"),
            "shfl": ptx.count("shfl.sync"), "bar_sync": ptx.count("bar.sync"),
            # Triton 3.6 writes atom (its result unused: ptxas still emits REDG), 3.9 red
            "vector_atomic_adds": len(re.findall(r"\b(?:red|atom)\.global\.gpu\.relaxed\.add\.v4\.f32", ptx)),
            "atomics": len(re.findall(r"\b(?:red|atom)\.global", ptx))}
    if cubin and name.startswith(("fwd-reverse", "serial-")):  # the state loop's machine code, per thread step
        steps = flags["CHUNK"] // (32 * warps) * (flags["UNROLL"] if serial else 1)  # state updates per pass
        try:
            loop = state_loop(cubin)
        except (OSError, subprocess.CalledProcessError):  # a Triton build without nvdisasm / cuobjdump
            loop = {}
        info.update({f"state_loop_{k}_per_step": v / steps for k, v in loop.items() if k in ("instructions", "SHFL", "SHFL_BFLY")})
    return info

arch = int(sys.argv[1])
print(json.dumps({name: summary(name, fn, flags, arch) for name, (fn, flags) in KERNELS.items()}))
'''


def compiled(arch: int) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE, str(arch)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sm90() -> dict[str, dict]:
    return compiled(90)


def test_every_kernel_compiles_for_hopper(sm90):
    assert len(sm90) == 24
    for name, info in sm90.items():
        assert info["entry"] and info["cubin"], name


@pytest.mark.slow
def test_every_kernel_compiles_for_ampere():
    for name, info in compiled(80).items():
        assert info["entry"] and info["cubin"], name


@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
def test_a_reverse_scan_compiles_like_a_forward_one(sm90, kernel):
    forward, reverse = sm90[f"{kernel}-reverseFalse"], sm90[f"{kernel}-reverseTrue"]
    for what in ("convert_layout", "st_shared", "vector_loads"):
        assert reverse[what] == forward[what], what
    assert reverse["vector_loads"] > 0


@pytest.mark.skipif(not triton_ops.interpreted(), reason="Triton runs compiled here")
def test_compiling_in_interpreter_mode_says_why_it_cannot():
    from ssamba.models.scan import triton_loop
    from ssamba.models.scan.triton_compile import compile_for

    with pytest.raises(RuntimeError, match="interpreter mode"):
        compile_for(triton_loop.chunk_carry_kernel, dict(BLOCK_D=32, BLOCK_N=16))


@pytest.mark.parametrize("kind", ["serial", "serial-saving-pipelined"])
def test_the_serial_forward_exchanges_across_lanes_once_per_16_steps(sm90, kind):
    """The serial forward's threads scan 16 steps each in registers (4 vector loads per row of u, delta, z): its
    shuffles, counted over the whole kernel, are fewer per step of a thread than half the loop forward's (4 steps
    per thread), in both directions (``tl.associative_scan`` reversed along an in-thread axis compiled to 4x the
    shuffles, so the in-thread scans are written out)."""
    forward, reverse = sm90[f"{kind}-reverseFalse"], sm90[f"{kind}-reverseTrue"]
    loop = sm90["fwd-reverseFalse"]
    assert reverse["shfl"] == forward["shfl"]
    assert forward["shfl"] / 16 < loop["shfl"] / 4 / 2
    assert forward["vector_loads"] >= 3 * 4 and reverse["vector_loads"] == forward["vector_loads"]


@pytest.mark.parametrize("kind", ["serial", "serial-unroll2", "serial-dt-proj", "serial-saving-pipelined",
                                  "serial-pair"])
def test_the_serial_state_loop_issues_under_half_the_loop_forwards_instructions(sm90, kind):
    """Read off the sm_90 machine code (Triton's own nvdisasm): per state update, the serial forward's loop over the
    states issues fewer than half the loop forward's instructions and shuffles, in both directions (measured 10.6-15.4
    against 43 and 46: benchmarks/triton_ptx.py), and does no cross-lane reduction (butterfly shuffles): the state
    carried between chunks goes through memory, where taking the last row's value and picking the state out of a
    register vector were two reductions per state."""
    if "state_loop_instructions_per_step" not in sm90["serial-reverseFalse"]:
        pytest.skip("this Triton ships no nvdisasm/cuobjdump to read the machine code with")
    for rev in (False, True):
        serial, loop = sm90[kind if kind == "serial-pair" else f"{kind}-reverse{rev}"], sm90[f"fwd-reverse{rev}"]
        assert 0 < serial["state_loop_instructions_per_step"] < loop["state_loop_instructions_per_step"] / 2, rev
        assert serial["state_loop_SHFL_per_step"] < loop["state_loop_SHFL_per_step"] / 2, rev
        assert serial["state_loop_SHFL_BFLY_per_step"] == 0 < loop["state_loop_SHFL_BFLY_per_step"], rev


def test_the_serial_forward_orders_its_scratch_with_barriers(sm90):
    """One warp (32 rows) has no cross-warp scan, so its two barriers are the ones that order its scratch memory:
    the row of A written once before the chunks, and each chunk's store of the carried state (by the lane with the
    last row) before the next chunk's loads by every lane.  Without them a lane may read a stale value (lanes of a
    warp are not in lockstep since Volta), which the interpreter cannot catch."""
    for rev in (False, True):
        assert sm90[f"serial-unroll2-reverse{rev}"]["bar_sync"] == 2, rev


def test_the_pair_kernel_averages_with_vector_atomic_adds(sm90):
    """Both directions in one launch (``triton_pair``): each direction adds its half of the output with 16-byte
    atomic adds, 4 per row of 16 steps like the single kernel's 4 vector stores (scalar atomics would be 4x the L2
    operations), and nothing else is atomic; each direction keeps its two barriers; the state loop is the single
    kernel's (two branches in one kernel cost registers, not instructions per update)."""
    pair, single = sm90["serial-pair"], sm90["serial-dt-proj-reverseFalse"]
    assert pair["vector_atomic_adds"] == pair["atomics"] == 2 * 4
    assert pair["bar_sync"] == 2 * 2 and single["atomics"] == 0
    if "state_loop_instructions_per_step" in pair:
        ratio = pair["state_loop_instructions_per_step"] / single["state_loop_instructions_per_step"]
        assert 0.9 <= ratio <= 1.1, ratio
