"""Process-wide CPU memory settings that long-sequence inference depends on, applied once when ssamba is imported.

PyTorch's CPU allocator takes every tensor from malloc and gives it back on free, so an op's output is fresh
memory each call.  With glibc's defaults a buffer above the (dynamic) mmap threshold is mapped anew and freed
memory above 2x that threshold is returned to the kernel, so each forward pass page-faults and zeroes its
intermediate activations again: at 2k tokens that was ~40% of SSAMBA-tiny's CPU forward time on 2 cores (375 ->
220 ms), at 22k the TLB misses of 4 KB pages nearly doubled the scan and the conv.  Two settings fix it:

- ``THP_MEM_ALLOC_ENABLE=1``: torch's own switch for transparent huge pages on buffers >= 2 MB (read once, at its
  first allocation; effective when ssamba is imported before torch allocates, which the CLI always is).
- glibc ``mallopt``: keep buffers up to 32 MB (glibc's maximum) on the heap and trim the heap only beyond 256 MB
  free, so intermediate tensors reuse memory that is already mapped.  The cost: up to 256 MB of freed memory
  stays with the process.

Either is skipped when the user chose for themselves (the variable set, ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` set); ``SSAMBA_CPU_MEMORY=default`` skips both.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

OPT_OUT_VAR = "SSAMBA_CPU_MEMORY"
MMAP_THRESHOLD = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def configure() -> dict[str, bool]:
    """Apply both settings where the user has not chosen; returns which ones are in effect."""
    if os.environ.get(OPT_OUT_VAR, "").lower() == "default":
        return {"huge_pages": False, "heap_reuse": False}
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return {"huge_pages": os.environ["THP_MEM_ALLOC_ENABLE"] == "1", "heap_reuse": _tune_glibc_malloc()}


def _tune_glibc_malloc() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user's own glibc tuning wins
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
