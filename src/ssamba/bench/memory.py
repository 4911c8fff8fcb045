"""Process memory as the efficiency benchmark measures it: resident set size (current and peak) on Linux, and what
the machine (or GPU) has available before a configuration is started."""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import torch


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident set size now (``VmRSS``); falls back to the peak where /proc is missing."""
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``VmHWM``, else ``ru_maxrss``)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, kB elsewhere


def available_bytes(device: str = "cpu") -> int:
    """Memory a new configuration may use: ``MemAvailable`` on CPU, free GPU memory on CUDA."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
