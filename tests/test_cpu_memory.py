"""ssamba.cpu_memory: on import, intermediate activations reuse mapped memory and large buffers get huge pages.

Each case runs in a fresh interpreter: both settings are process-wide and read once."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc/Linux specific")

PROBE = r"""
import json, resource, ssamba, torch
from ssamba import cpu_memory
faults = []
for _ in range(6):  # a layer's intermediate activations (six of 12 MB), freed, then the next layer's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    layer = [torch.empty(3 << 20).fill_(1.0) for _ in range(6)]
    del layer
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
big = torch.ones(64 << 18)  # 64 MB, above glibc's mmap threshold: huge pages if enabled
huge_kb = sum(int(l.split()[1]) for l in open("/proc/self/smaps") if l.startswith("AnonHugePages"))
print(json.dumps({"faults": faults[2:], "huge_kb": huge_kb, "state": cpu_memory.configure(),
                  "thp_env": __import__("os").environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def probe(**env: str) -> dict:
    full = {k: v for k, v in os.environ.items()
            if k not in ("THP_MEM_ALLOC_ENABLE", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                         "SSAMBA_CPU_MEMORY")}
    full.update(env)
    src = str(Path(__file__).resolve().parents[1] / "src")
    full["PYTHONPATH"] = src + os.pathsep + full.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def thp_available() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def test_repeated_activations_reuse_memory_instead_of_faulting_it_in_again():
    tuned = probe()
    assert tuned["state"] == {"huge_pages": True, "heap_reuse": True}
    # already mapped: four layers fault in less than one of their 12 MB buffers (3072 pages), where without reuse
    # each layer faults in all six. Not zero: under memory pressure the kernel may take back a huge page's worth
    # of freed heap (one CI run saw 518 faults in one layer, none in the other three)
    assert sum(tuned["faults"]) < 3072, tuned
    # glibc's initial thresholds, pinned (its dynamic adjustment depends on the process's history): every 12 MB
    # buffer is mapped anew and faulted in (3072 faults of 4 KB each, 6 per layer); ssamba leaves the user's
    # settings alone
    pinned = probe(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072", THP_MEM_ALLOC_ENABLE="0")
    assert pinned["state"] == {"huge_pages": False, "heap_reuse": False}
    assert min(pinned["faults"]) >= 6 * 2500, pinned


def thp_mode() -> str | None:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def test_opting_out_applies_neither_setting():
    out = probe(SSAMBA_CPU_MEMORY="default")
    assert out["state"] == {"huge_pages": False, "heap_reuse": False} and out["thp_env"] is None
    if thp_mode() == "madvise":  # huge pages only where torch asks for them, which it then does not
        assert out["huge_kb"] < 32 << 10, out


@pytest.mark.skipif(not thp_available(), reason="transparent huge pages are disabled on this machine")
def test_large_buffers_get_huge_pages_unless_opted_out():
    assert probe()["huge_kb"] >= 32 << 10
    assert probe(THP_MEM_ALLOC_ENABLE="0")["huge_kb"] < 32 << 10
