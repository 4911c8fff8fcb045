"""Compile a Triton kernel for a GPU target on any machine (Triton lowers to PTX and cubin without a GPU),
specialised as the launch wrappers' calls are, and read its machine code: what ``tests/test_triton_compile.py`` and
``benchmarks/triton_ptx.py`` inspect.  Not for running anything.
"""
from __future__ import annotations

import collections
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from ssamba.models.scan import triton_ops
from ssamba.models.scan.triton_ops import triton

#: Time strides the wrappers pass as 1 (Triton specialises an integer argument equal to 1 into a constant).
UNIT_STRIDES = ("s_xl", "s_bl")
#: Sizes and strides Triton marks 16-divisible on a launch with aligned (padded) sequences.
ALIGNED_INTS = ("dim", "length", "s_xb", "s_xd", "s_bb", "s_bn", "s_ob", "s_od", "s_zb", "s_carry")


def compile_for(fn: Callable, flags: dict, *, arch: int = 90, num_warps: int = 4,
                unit_strides: Iterable[str] = UNIT_STRIDES, aligned_ints: Iterable[str] = ALIGNED_INTS,
                unaligned_pointers: Iterable[str] = ()) -> tuple[str, str, bytes]:
    """(TTGIR, PTX, cubin: empty if none was built) of kernel ``fn`` (a plain function, as ``triton_loop`` defines them)
    for ``sm_{arch}``.  ``flags`` gives every constexpr; pointers are float32 and 16-byte aligned unless named in
    ``unaligned_pointers``, the integers in ``aligned_ints`` 16-divisible, the others plain."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if triton_ops.interpreted():
        raise RuntimeError("Triton was imported in interpreter mode (TRITON_INTERPRET=1): kernels cannot be compiled "
                           "in this process")
    jitted = triton.jit(fn)
    constexprs = {p.name for p in jitted.params if p.is_constexpr}
    if not constexprs <= set(flags):
        raise ValueError(f"{fn.__name__}: flags must set {sorted(constexprs - set(flags))} too")
    unit, aligned, unaligned = set(unit_strides), set(aligned_ints), set(unaligned_pointers)
    sig, consts, attrs = {}, {}, {}
    for i, arg in enumerate(jitted.arg_names):
        if arg in flags:
            sig[arg], consts[arg] = "constexpr", flags[arg]
        elif arg in unit:
            sig[arg], consts[arg] = "constexpr", 1
        elif arg.endswith("_ptr"):
            sig[arg] = "*fp32"
            if arg not in unaligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[arg] = "i32"
            if arg in aligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
    kernel = triton.compile(ASTSource(jitted, sig, consts, _attributes(attrs)), target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=num_warps, **triton_ops.FP_FUSION))
    return kernel.asm["ttgir"], kernel.asm["ptx"], kernel.asm.get("cubin") or b""


def _attributes(attrs: dict) -> object:
    """``attrs`` ({(index,): [["tt.divisibility", 16]]}, Triton >= 3.3) as the ``AttrsDescriptor`` that Triton 3.2
    takes instead (the oldest one this compiles with)."""
    try:
        from triton.backends.compiler import AttrsDescriptor
    except ImportError:
        return attrs
    return AttrsDescriptor.from_hints({index: 16 for (index,) in attrs})


def _tool(name: str) -> Path:
    """A CUDA binary utility bundled with Triton's NVIDIA backend (nvdisasm, cuobjdump)."""
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def state_loop(cubin: bytes) -> dict[str, int]:
    """Registers, and the SASS (machine) instructions of the smallest loop of a scan kernel's cubin whose body
    exponentiates and shuffles across lanes, which is its loop over the states: their number, shuffles (SHFL_BFLY:
    the butterfly ones of cross-lane reductions), MUFU (exp2) and barriers.  Static counts: what one pass of the
    loop issues, not how long it takes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True,
                               check=True).stdout
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^\s*(\.L_x_\d+):", line))}
    opcode = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
    best: list[str] = []
    for i, line in enumerate(lines):  # loops: a branch back to an earlier label; the smallest one that exponentiates
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if m and labels.get(m.group(1), i) < i:
            ops = [o.group(1) for x in lines[labels[m.group(1)]:i + 1] if (o := opcode.match(x))]
            # (and shuffles: the serial forward's prologue over the states, exp(A_log) unrolled, does not)
            if (any(op.startswith("MUFU") for op in ops) and any(op.startswith("SHFL") for op in ops)
                    and (not best or len(ops) < len(best))):
                best = ops
    count = collections.Counter(op.split(".")[0] for op in best)
    regs = re.search(r"REG:(\d+)", usage)
    return {"registers": int(regs.group(1)) if regs else -1, "instructions": len(best), "SHFL": count["SHFL"],
            "SHFL_BFLY": sum(op.startswith("SHFL.BFLY") for op in best), "MUFU": count["MUFU"], "BAR": count["BAR"]}
