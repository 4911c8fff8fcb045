"""What the Triton scan kernels compile to on a GPU target, without a GPU: layout conversions, shared-memory traffic,
warp shuffles and vector loads per kernel variant (Triton compiles to PTX on any machine).

Why: on the H200 the model's scan calls took ~2x the scan benchmark's time for the same shape, and half of them are
reverse scans.  Compiled with negated time strides (the old reverse path), the loop forward had 3x the layout
conversions and shuffles of the forward scan and no vector loads; read in ascending memory order (``REVERSE``) it
compiles like the forward.  The counts are static (per kernel, not per executed step): they show a difference in
the code, the GPU check measures what it costs.  The backward is compiled the same ways.  The last variant is why
the wrapper pads sequences to a multiple of 16 steps: SSAMBA's lengths (patches + a cls token) are never
16-divisible, and a length Triton cannot prove divisible costs the same as the negated strides did.

    PYTHONPATH=src python benchmarks/triton_ptx.py [--arch 90] [--chunk 512] [--warps 4]
"""
from __future__ import annotations

import argparse
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ssamba.models.scan import triton_loop

# Pointers the old reverse path moved to the last step (negated strides from there: not 16-byte aligned).
POINTERS_MOVED_BY_REVERSE = {"u_ptr", "dl_ptr", "z_ptr", "out_ptr", "B_ptr", "C_ptr", "ypre_ptr", "dout_ptr",
                             "du_ptr", "ddl_ptr", "dz_ptr"}


def compile_kernel(name: str, *, negated: bool, reverse: bool, chunk: int, warps: int, arch: int,
                   aligned: bool = True) -> tuple[str, str]:
    """(TTGIR, PTX) of a loop kernel ("fwd" inference or "bwd") as the wrapper launches it at SSAMBA-tiny's
    shapes: Triton specializes 16-divisible integers and 16-byte-aligned pointers, and a time stride of 1 (negated:
    -1, pointers at the last step, not aligned)."""
    fn = triton.jit({"fwd": triton_loop.fwd_loop_kernel, "bwd": triton_loop.bwd_loop_kernel}[name])
    sig, consts, attrs = {}, {}, {}
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, SAVE_STATES=False, BLOCK_D=1, BLOCK_N=16,
                 CHUNK=chunk, CHUNK_PARALLEL=False, REVERSE=reverse)
    for i, arg in enumerate(fn.arg_names):
        if arg in flags:
            sig[arg], consts[arg] = "constexpr", flags[arg]
        elif arg in ("s_xl", "s_bl") and not negated:
            sig[arg], consts[arg] = "constexpr", 1
        elif arg.endswith("_ptr"):
            sig[arg] = "*fp32"
            if not (negated and arg in POINTERS_MOVED_BY_REVERSE):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[arg] = "i32"
            if arg in (("dim", "length", "s_xb", "s_xd", "s_bb", "s_bn") if aligned else ("dim", "s_xb")):
                attrs[(i,)] = [["tt.divisibility", 16]]
    kernel = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=warps))
    return kernel.asm["ttgir"], kernel.asm["ptx"]


def counts(ttgir: str, ptx: str) -> dict[str, int]:
    return {"layout conversions": ttgir.count("convert_layout"), "st.shared": ptx.count("st.shared"),
            "ld.shared": ptx.count("ld.shared"), "bar.sync": ptx.count("bar.sync"), "shfl": ptx.count("shfl.sync"),
            "ld.global": len(re.findall(r"ld\.global", ptx)),
            "vector loads": len(re.findall(r"ld\.global\S*\.v4", ptx)), "PTX lines": len(ptx.splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200)")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--warps", type=int, default=4)
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


if __name__ == "__main__":
    main()
