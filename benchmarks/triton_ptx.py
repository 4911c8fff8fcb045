"""What the Triton scan kernels compile to on a GPU target, without a GPU: layout conversions, shared-memory traffic,
warp shuffles and vector loads per kernel variant (Triton compiles to PTX on any machine), and the machine code
(SASS) of each forward's state loop: instructions per state update, registers.

Why: on the H200 the model's scan calls took ~2x the scan benchmark's time for the same shape, and half of them are
reverse scans.  Compiled with negated time strides (the old reverse path), the loop forward had 3x the layout
conversions and shuffles of the forward scan and no vector loads; read in ascending memory order (``REVERSE``) it
compiles like the forward.  The counts are static (per kernel, not per executed step): they show a difference in
the code, the GPU check measures what it costs.  The backward is compiled the same ways.  The last variant is why
the wrapper pads sequences to a multiple of 16 steps: SSAMBA's lengths (patches + a cls token) are never
16-divisible, and a length Triton cannot prove divisible costs the same as the negated strides did.

The state-loop table is the forward's per-step cost, read off the cubin with the ``nvdisasm`` and ``cuobjdump``
that ship with Triton: the instructions of the innermost loop (one state ``n`` over a thread's steps) divided by
the steps a thread holds.  On an H200 the loop forward's 41 instructions per update ran at 0.52 ms for B=2,
d_inner=384, N=16, L=16384 (10x the bandwidth floor, ~2x its issue-slot bound): the count predicts the
instruction-bound part of the time, not latency or occupancy, which the GPU check measures.

    PYTHONPATH=src python benchmarks/triton_ptx.py [--arch 90] [--chunk 512] [--warps 4]
"""
from __future__ import annotations

import argparse
import re

import triton

from ssamba.models.scan import triton_loop, triton_pair, triton_serial
from ssamba.models.scan.triton_compile import ALIGNED_INTS, UNIT_STRIDES, compile_for, state_loop

# Pointers the old reverse path moved to the last step (negated strides from there: not 16-byte aligned).
POINTERS_MOVED_BY_REVERSE = {"u_ptr", "dl_ptr", "z_ptr", "out_ptr", "B_ptr", "C_ptr", "ypre_ptr", "dout_ptr",
                             "du_ptr", "ddl_ptr", "dz_ptr"}


def compile_kernel(name: str, *, negated: bool, reverse: bool, chunk: int, warps: int, arch: int,
                   aligned: bool = True) -> tuple[str, str]:
    """(TTGIR, PTX) of a loop kernel ("fwd" inference or "bwd") as the wrapper launches it at SSAMBA-tiny's
    shapes: 16-divisible sizes and strides (unless ``aligned`` is off, as for an unpadded length), 16-byte-aligned
    pointers and a time stride of 1 (negated: -1, pointers at the last step, not aligned)."""
    fn = {"fwd": triton_loop.fwd_loop_kernel, "bwd": triton_loop.bwd_loop_kernel}[name]
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BLOCK_D=1, BLOCK_N=16, CHUNK=chunk,
                 REVERSE=reverse)
    if name == "fwd":
        flags.update(SAVE_STATES=False, CHUNK_PARALLEL=False)
    ttgir, ptx, _ = compile_for(fn, flags, arch=arch, num_warps=warps, unit_strides=() if negated else UNIT_STRIDES,
                                aligned_ints=ALIGNED_INTS if aligned else ("dim", "s_xb"),
                                unaligned_pointers=POINTERS_MOVED_BY_REVERSE if negated else ())
    return ttgir, ptx


def counts(ttgir: str, ptx: str) -> dict[str, int]:
    return {"layout conversions": ttgir.count("convert_layout"), "st.shared": ptx.count("st.shared"),
            "ld.shared": ptx.count("ld.shared"), "bar.sync": ptx.count("bar.sync"), "shfl": ptx.count("shfl.sync"),
            "ld.global": len(re.findall(r"ld\.global", ptx)),
            "vector loads": len(re.findall(r"ld\.global\S*\.v4", ptx)), "PTX lines": len(ptx.splitlines())}


def state_loop_table(arch: int) -> None:
    """The loop and serial forwards (inference: no saved states) at the launch shapes the GPU check sweeps."""
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, SAVE_STATES=False)
    variants = [("loop", triton_loop.fwd_loop_kernel, dict(BLOCK_D=1, BLOCK_N=16, CHUNK=512, CHUNK_PARALLEL=False),
                 4, 1)]
    for warps in (1, 2, 4):
        for stages, unroll in ((1, 1), (1, 2), (2, 1)):
            variants.append((f"serial, stages {stages}, unroll {unroll}", triton_serial.fwd_serial_kernel,
                             dict(CHUNK=512 * warps, STAGES=stages, SAVE_EVERY=512, UNROLL=unroll, DT_RANK=0), warps,
                             unroll))
    for warps in (1, 2):  # both directions of a mixer in one launch (inference, dt_proj in the kernel)
        variants.append(("serial pair, dt_proj, unroll 2", triton_pair.fwd_serial_pair_kernel,
                         dict(CHUNK=512 * warps, STAGES=1, UNROLL=2, DT_RANK=12), warps, 2))
    print(f"\nforward state loop (SASS, sm_{arch}; per thread and pass of the loop: its state updates (steps it "
          f"holds x states per pass), and instructions per update)")
    print("| kernel | warps | chunk | direction | registers | loop instructions | updates per pass | "
          "instructions per update | shuffles per update | MUFU per update | barriers per loop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, fn, extra, warps, states in variants:
        pair = fn is triton_pair.fwd_serial_pair_kernel  # one kernel, both directions: its smallest loop
        for reverse in (False,) if pair else (False, True):
            both = extra if pair else dict(flags, **extra, REVERSE=reverse)
            _, _, cubin = compile_for(fn, both, arch=arch, num_warps=warps)
            if not cubin:
                print(f"| {label} | {warps} | {extra['CHUNK']} | no cubin built |")
                continue
            st = state_loop(cubin)
            steps = extra["CHUNK"] // (32 * warps) * states  # state updates per thread per pass of the loop
            direction = "both" if pair else "reverse" if reverse else "forward"
            print(f"| {label} | {warps} | {extra['CHUNK']} | {direction} | "
                  f"{st['registers']} | {st['instructions']} | {steps} | {st['instructions'] / steps:.1f} | "
                  f"{st['SHFL'] / steps:.2f} | {st['MUFU'] / steps:.2f} | {st['BAR']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200)")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--skip-sass", action="store_true", help="leave out the forward state-loop table")
    args = parser.parse_args()
    variants = {"forward": dict(negated=False, reverse=False),
                "reverse, ascending (REVERSE)": dict(negated=False, reverse=True),
                "reverse, negated strides (old)": dict(negated=True, reverse=False),
                "forward, length not 16-divisible (unpadded)": dict(negated=False, reverse=False, aligned=False)}
    print(f"loop kernels, sm_{args.arch}, chunk {args.chunk}, {args.warps} warps, triton {triton.__version__}")
    for kernel in ("fwd", "bwd"):
        rows = {label: counts(*compile_kernel(kernel, **v, chunk=args.chunk, warps=args.warps, arch=args.arch))
                for label, v in variants.items()}
        columns = list(next(iter(rows.values())))
        print(f"\n{kernel}_loop_kernel\n| variant | " + " | ".join(columns) + " |")
        print("|---|" + "---|" * len(columns))
        for label, row in rows.items():
            print(f"| {label} | " + " | ".join(str(row[c]) for c in columns) + " |")
    if not args.skip_sass:
        state_loop_table(args.arch)


if __name__ == "__main__":
    main()
