"""Benchmark of the CPU selective scan and of SSAMBA-tiny on CPU (issue 3).

Prints: the scan per backend (B in {1, 4}, L in {512, 1212, 4096, 22000}; forward and forward+backward time,
state updates per second per core, peak memory); the single-thread scan rate; SSAMBA-tiny forward latency at
512 tokens (1 and 2 threads; fp32, bf16 autocast per clip and over 8 clips, and bf16 autocast with the Linear
weights stored in bf16) with its floor (matmul FLOPs at the measured matmul rate plus 48 scans at the measured scan
rate); SSAMBA-tiny vs SSAST-tiny (sdpa) at 512, 2k and 22k tokens; SSAMBA-tiny training steps at B=4, 128x1024
(fine-tuning, pretraining with one and with two forward passes, fine-tuning under bf16 autocast), each with its floor
(its own matmuls, recorded and replayed, plus its scans' forward and backward).
Times are medians; the fp32/bf16, fp32/floor, step/floor and SSAMBA/SSAST ratios are medians of per-round ratios of runs
interleaved round-robin (this kind of VM drifts by up to 2x within minutes).

    PYTHONPATH=src python benchmarks/scan.py [--quick] [--threads N]

On a machine shared with other jobs, numbers move with the load: the header prints how many CPUs other processes
kept busy over one second before the run (and, on a VM, how much the hypervisor stole), and the last line how much
was stolen during the run (Linux /proc/stat; the load average would count this benchmark's own previous runs).
"""
from __future__ import annotations

import argparse
import collections
import copy
import ctypes
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ssamba.models import build_encoder, scan
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset
from ssamba.models.precision import cast_matmul_weights
from ssamba.models.scan import cpu, ops
from ssamba.pretrain.model import MaskedPatchModel
from ssamba.train.optim import OptimConfig, build_optimizer
from ssamba.train.tasks import ClassificationTask

aten = torch.ops.aten

D_INNER, D_STATE = 384, 16  # SSAMBA-tiny: d_inner = 2 * 192
THREADS = (1, 2)  # thread counts of the model-latency table
LIBC = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None


# ------------------------------------------------------------------------------------------------- measuring
LAST_MIN = [0.0]  # fastest run of the latest timed() call, printed next to the median where noise matters
LAST_CPU = [0.0]  # median CPU time of the calling thread: the work itself when single-threaded on a busy machine


def timed(fn: Callable[[], object], min_runs: int = 5, min_time: float = 0.5, warmup: int = 1,
          max_runs: int = 200) -> float:
    """Median wall time of fn() in seconds (the minimum is left in LAST_MIN, the median thread CPU time in
    LAST_CPU)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    cpu_times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_time and len(times) < max_runs):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        cpu_times.append(time.thread_time() - c)
        times.append(time.perf_counter() - t)
    LAST_MIN[0] = min(times)
    LAST_CPU[0] = statistics.median(cpu_times)
    return statistics.median(times)



class Interleaved:
    """Timings of several functions run round-robin: per-function medians, fastest runs and median thread CPU
    times, and medians of per-round ratios.  The functions of one round run back to back, so a machine whose
    speed drifts over seconds (like this shared VM) biases them alike and the ratios stay comparable.  A function
    that returns a float has timed itself (see best_of): that value is its time, wall and CPU."""

    def __init__(self, fns: list[Callable[[], object]], min_runs: int = 5, min_time: float = 2.0,
                 max_runs: int = 100) -> None:
        for fn in fns:  # warm-up
            fn()
        self.wall: list[list[float]] = [[] for _ in fns]
        self.cpu: list[list[float]] = [[] for _ in fns]
        start = time.perf_counter()
        while len(self.wall[0]) < min_runs or (time.perf_counter() - start < min_time and len(self.wall[0]) < max_runs):
            for i, fn in enumerate(fns):
                t, c = time.perf_counter(), time.thread_time()
                own = fn()
                c, t = time.thread_time() - c, time.perf_counter() - t
                if isinstance(own, float):
                    c = t = own
                self.cpu[i].append(c)
                self.wall[i].append(t)

    def median(self, i: int, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[i])

    def fastest(self, i: int) -> float:
        return min(self.wall[i])

    def ratio(self, of_round: Callable[[list[float]], float], cpu: bool = False) -> float:
        """Median over rounds of of_round(that round's times)."""
        times = self.cpu if cpu else self.wall
        return statistics.median(of_round(list(r)) for r in zip(*times))


def best_of(fn: Callable[[], object], k: int = 5) -> Callable[[], float]:
    """fn's fastest of k calls after one untimed call: the warm rate of a small op, for a floor measured between
    forward passes that evict its data."""
    def run() -> float:
        fn()
        best = float("inf")
        for _ in range(k):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best
    return run


def cpu_jiffies() -> tuple[int, int, int] | None:
    """(all, idle + iowait, steal) CPU time of the whole machine in clock ticks, from /proc/stat (Linux only)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), fields[3] + fields[4], steal


def cpus_taken(seconds: float = 1.0) -> tuple[float, float] | None:
    """(CPUs kept busy by other processes, CPUs stolen by the hypervisor) over ``seconds`` while this one sleeps."""
    start = cpu_jiffies()
    time.sleep(seconds)
    end = cpu_jiffies()
    if start is None or end is None or end[0] == start[0]:
        return None
    cpus = (os.cpu_count() or 1) / (end[0] - start[0])  # CPUs per tick of the machine-wide total
    idle, steal = end[1] - start[1], end[2] - start[2]
    return (end[0] - start[0] - idle - steal) * cpus, steal * cpus


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_mb(fn: Callable[[], object]) -> float | None:
    """Peak resident memory added while fn() runs (Linux: reset VmHWM through clear_refs), in MB."""
    if LIBC is None:
        return None
    LIBC.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    return None if base is None or peak is None else max(peak - base, 0) / 1024


def with_threads(n: int):
    class _Threads:
        def __enter__(self):
            self.old = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.old)
    return _Threads()


# ------------------------------------------------------------------------------------------------- the scan
def scan_inputs(batch: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """One SSAMBA branch's scan: u, delta, A, B, C, D, z, delta_bias in mamba_ssm layout."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return [r(batch, D_INNER, length), r(batch, D_INNER, length) * 0.5 - 1,
            -torch.exp(r(D_INNER, D_STATE) * 0.5), r(batch, D_STATE, length), r(batch, D_STATE, length),
            r(D_INNER), r(batch, D_INNER, length), r(D_INNER) * 0.5]


def run_scan(backend: str, inputs: list[torch.Tensor], backward: bool) -> None:
    """One scan through ``selective_scan`` (mamba_ssm layout), or "cpu-cl": the channels-last op the mixer calls."""
    if backend == "cpu-cl":
        return run_scan_cl(inputs, backward)
    if backward:
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = scan.selective_scan(*leaves, delta_softplus=True, backend=backend)
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            scan.selective_scan(*inputs, delta_softplus=True, backend=backend)


#: the last inputs converted to channels-last, and their conversion (holding the inputs keeps their id unique)
_CL_CACHE: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []


def run_scan_cl(inputs: list[torch.Tensor], backward: bool) -> None:
    if not _CL_CACHE or _CL_CACHE[0][0] is not inputs:  # the mixer's layout, converted once outside the timing
        u, delta, A, B, C, D, z, bias = inputs
        cl = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731
        _CL_CACHE[:] = [(inputs, [cl(u), cl(delta), A, cl(B), cl(C), D, cl(z), bias])]
    u, delta, A, B, C, D, z, bias = _CL_CACHE[0][1]
    if backward:
        u, delta, B, C, z = (t.detach().requires_grad_() for t in (u, delta, B, C, z))
        out = ops.scan([u], [delta], [A], [B], [C], [D], [bias], z, True)
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            ops.scan([u], [delta], [A], [B], [C], [D], [bias], z, True)


def scan_table(quick: bool) -> None:
    threads = torch.get_num_threads()
    print(f"\n## Selective scan, one direction (d_inner={D_INNER}, d_state={D_STATE}, softplus, D skip, z gate), "
          f"{threads} threads")
    print("reference only where affordable: forward for B*L <= 4096, forward+backward for B*L <= 2048 "
          "(its Python time loop takes ~0.1 ms per step; backward keeps every state)")
    print("mamba_ssm: CUDA only, not measured on this CPU machine")
    print("cpu = selective_scan(backend='cpu') in mamba_ssm's (B, D, L) layout, including the transposes to and from "
          "the kernels' channels-last layout; cpu-cl = the channels-last op itself, as the fused mixer calls it")
    header = (f"{'backend':9} {'B':>2} {'L':>6} | {'fwd ms':>9} {'fwd+bwd ms':>11} | {'upd/s/core':>10} "
              f"{'(cpu-time)':>10} | {'peak MB fwd':>11} {'fwd+bwd':>8} | {'output MB':>9}")
    print(header)
    print("-" * len(header))
    lengths = (512, 1212, 4096) if quick else (512, 1212, 4096, 22000)
    for batch in (1, 4):
        for length in lengths:
            inputs = scan_inputs(batch, length)
            updates = batch * length * D_INNER * D_STATE
            out_mb = batch * length * D_INNER * 4 / 2**20
            for backend in ("cpu-cl", "cpu", "reference"):
                if backend == "reference" and batch * length > 4096:
                    print(f"{backend:9} {batch:2} {length:6} | {'skipped':>9}")
                    continue
                fwd = timed(lambda: run_scan(backend, inputs, False), min_runs=3 if backend == "reference" else 5)
                by_cpu = f"{updates / LAST_CPU[0]:10.2e}" if threads == 1 else f"{'':10}"
                mem_f = peak_memory_mb(lambda: run_scan(backend, inputs, False))
                if backend != "reference" or batch * length <= 2048:
                    both = timed(lambda: run_scan(backend, inputs, True), min_runs=3, warmup=1)
                    mem_b = peak_memory_mb(lambda: run_scan(backend, inputs, True))
                    both_s, mem_b_s = f"{both * 1e3:11.2f}", _mb(mem_b)
                else:
                    both_s, mem_b_s = f"{'skipped':>11}", f"{'':>8}"
                print(f"{backend:9} {batch:2} {length:6} | {fwd * 1e3:9.2f} {both_s} | "
                      f"{updates / fwd / threads:10.2e} {by_cpu} | {_mb(mem_f):>11} {mem_b_s:>8} | {out_mb:9.1f}")


def _mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def single_thread_rate() -> float:
    inputs = scan_inputs(1, 4096)
    with with_threads(1):
        t = timed(lambda: run_scan("cpu-cl", inputs, False), min_runs=10)
    updates = 4096 * D_INNER * D_STATE
    rate = updates / t
    print(f"\nscan forward (channels-last op), 1 thread, B=1 L=4096: median {t * 1e3:.2f} ms = {rate:.2e} "
          f"state updates/s/core (fastest run {updates / LAST_MIN[0]:.2e}, by thread CPU time "
          f"{updates / LAST_CPU[0]:.2e}; target >= 3e9)")
    inputs = scan_inputs(4, 512)
    for threads in sorted({1, torch.get_num_threads()}):
        with with_threads(threads):
            both = timed(lambda: run_scan("cpu-cl", inputs, True), min_runs=10)
        cpu_note = f", thread CPU time {LAST_CPU[0] * 1e3:.2f} ms" if threads == 1 else ""
        print(f"scan forward+backward (channels-last op), B=4 L=512, {threads} thread(s): median "
              f"{both * 1e3:.2f} ms, fastest {LAST_MIN[0] * 1e3:.2f} ms{cpu_note} (target <= 6 ms on 2 threads)")
    return rate


# ------------------------------------------------------------------------------------------------- models
def ssamba_tiny(tdim: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(preset("ssamba", "tiny", input_tdim=tdim)).eval()


def ssast_tiny(tdim: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(preset("ssast", "tiny", input_tdim=tdim, attention="sdpa")).eval()


def tokens_to_tdim(tokens: int) -> int:
    return tokens // 8 * 16  # 128 mel bins -> 8 patch rows, stride 16


def forward_step(model: torch.nn.Module, tdim: int, bf16: bool = False) -> Callable[[], None]:
    x = torch.randn(1, tdim, 128)

    def step():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)
    return step


def region_step(model: torch.nn.Module, tdim: int, clips: int = 8) -> Callable[[], float]:
    """``clips`` bf16 forward passes under one autocast region, as a loop over clips runs them: autocast's cache
    casts the float32 weights once per region (the fused mixer op uses it too).  Returns the time per clip, the
    first one, which pays the casts, included."""
    x = torch.randn(1, tdim, 128)

    def step() -> float:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(clips):
                model(x)
        return (time.perf_counter() - start) / clips
    return step


def without_amx(step: Callable[[], object]) -> Callable[[], object]:
    """``step`` with the fused mixers' bf16 matmuls through oneDNN (at::mm, as F.linear) instead of AMX tiles."""
    def run() -> object:
        old = os.environ.get(cpu.AMX_VAR)
        os.environ[cpu.AMX_VAR] = "0"
        try:
            return step()
        finally:
            if old is None:
                del os.environ[cpu.AMX_VAR]
            else:
                os.environ[cpu.AMX_VAR] = old
    return run


def matmul_flops(tokens: int) -> tuple[float, list[tuple[int, int, int]]]:
    """SSAMBA-tiny's matmul FLOPs for one clip and its (rows, in, out) linear shapes, per layer and patch embed."""
    d, e, n, r = 192, D_INNER, D_STATE, 12
    per_layer = [(tokens, d, 2 * e), (tokens, e, r + 2 * n), (tokens, e, r + 2 * n), (tokens, r, e), (tokens, r, e),
                 (tokens, e, d)]
    shapes = per_layer * 24 + [(tokens, 256, d)]
    return sum(2.0 * m * k * o for m, k, o in shapes), per_layer + [(tokens, 256, d)]


def matmul_set(tokens: int) -> tuple[Callable[[], object], float]:
    """SSAMBA-tiny's own fp32 linear shapes, one layer's worth and the patch embedding, and their FLOPs: timing
    it gives this machine's matmul rate for the floor."""
    _, shapes = matmul_flops(tokens)
    xs = [(torch.randn(m, k), torch.randn(o, k)) for m, k, o in shapes]
    return (lambda: [F.linear(x, w) for x, w in xs]), sum(2.0 * m * k * o for m, k, o in shapes)


def mixer_scan(tokens: int, batch: int = 1, backward: bool = False) -> Callable[[], object]:
    """One mixer's scan op (both directions, softplus, D, gate, average); with ``backward``, the forward that saves
    for backward and the backward of every input, as in a training step.  B and C are views of one x_proj output,
    as in the mixer."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, delta = [r(batch, tokens, D_INNER) for _ in range(2)], [r(batch, tokens, D_INNER) * 0.5 - 1 for _ in range(2)]
    A = [-torch.exp(r(D_INNER, D_STATE) * 0.5) for _ in range(2)]
    dbl = [r(batch, tokens, 12 + 2 * D_STATE) for _ in range(2)]
    D, bias, z = [r(D_INNER) for _ in range(2)], [r(D_INNER) for _ in range(2)], r(batch, tokens, D_INNER)
    leaves = [*u, *delta, *A, *dbl, *D, *bias, z]
    for t in leaves:
        t.requires_grad_(backward)
    args = (u, delta, A, [t[..., 12:12 + D_STATE] for t in dbl], [t[..., 12 + D_STATE:] for t in dbl], D, bias, z)
    if backward:
        grad = r(batch, tokens, D_INNER)

        def run_backward():
            ops.scan(*args, True).backward(grad)
            for t in leaves:
                t.grad = None
        return run_backward

    def run():
        with torch.no_grad():
            ops.scan(*args, True)
    return run


def model_latency() -> None:
    print("\n## SSAMBA-tiny forward, B=1, 512 tokens (128x1024 input)")
    model = ssamba_tiny(1024)
    # the same model with its Linear weights stored in bf16 (cast_matmul_weights): autocast's per-forward weight
    # casts become no-ops, the outputs are the same bit for bit
    model_w = cast_matmul_weights(copy.deepcopy(model), torch.bfloat16)
    flops, _ = matmul_flops(512)
    amx = cpu.amx_available()
    print("bf16 matmuls of the fused mixers: " + ("AMX tiles (csrc/amx_linear.cpp); the oneDNN column: the same "
                                                  "with SSAMBA_AMX=0" if amx else "oneDNN (no AMX here)"))
    print(f"{'threads':>7} | {'fp32 ms':>8} {'(min)':>7} {'bf16 ms':>8} {'(min)':>7} {'speedup':>7} | "
          f"{'oneDNN ms':>9} {'speedup':>7} | "
          f"{'bf16 8/r ms':>11} {'speedup':>7} | {'bf16 w ms':>9} {'speedup':>7} | {'matmul GF/s':>11} "
          f"{'matmul ms':>9} {'48 scans ms':>11} {'floor ms':>8} {'fp32/floor':>10}")
    mm_fn, mm_flops = matmul_set(512)
    scan_fn = mixer_scan(512)
    cpu_rows = []
    for threads in THREADS:
        with with_threads(threads):
            # fp32 forward, the three bf16 ones, the matmul shapes and one mixer scan, round-robin: the floor of
            # each round (warm rates: best of 5 calls) is measured next to that round's forward passes
            runs = Interleaved([forward_step(model, 1024), forward_step(model, 1024, bf16=True),
                                forward_step(model_w, 1024, bf16=True), best_of(mm_fn), best_of(scan_fn),
                                region_step(model, 1024)]
                               + ([without_amx(forward_step(model, 1024, bf16=True))] if amx else []), min_runs=10)
        floor_of = lambda t: t[3] * flops / mm_flops + 24 * t[4]  # noqa: E731
        rate = mm_flops / runs.median(3)
        scans = 24 * runs.median(4)
        floor = flops / rate + scans
        fp32, bf16, bf16_w = runs.median(0), runs.median(1), runs.median(2)
        print(f"{threads:7} | {fp32 * 1e3:8.1f} {runs.fastest(0) * 1e3:7.1f} {bf16 * 1e3:8.1f} "
              f"{runs.fastest(1) * 1e3:7.1f} {runs.ratio(lambda t: t[0] / t[1]):6.2f}x | "
              + (f"{runs.median(6) * 1e3:9.1f} {runs.ratio(lambda t: t[0] / t[6]):6.2f}x | " if amx else
                 f"{'-':>9} {'-':>7} | ") +
              f"{runs.median(5) * 1e3:11.1f} {runs.ratio(lambda t: t[0] / t[5]):6.2f}x | {bf16_w * 1e3:9.1f} "
              f"{runs.ratio(lambda t: t[0] / t[2]):6.2f}x | {rate / 1e9:11.1f} "
              f"{flops / rate * 1e3:9.1f} {scans * 1e3:11.1f} {floor * 1e3:8.1f} "
              f"{runs.ratio(lambda t: t[0] / floor_of(t)):10.2f}")
        if threads == 1:
            cpu_rows.append(runs)
    for runs in cpu_rows:
        mm_cpu = flops / mm_flops * runs.median(3, cpu=True)
        scans_cpu = 24 * runs.median(4, cpu=True)
        print(f"1 thread by thread CPU time (immune to waiting for a core): fp32 {runs.median(0, cpu=True) * 1e3:.1f} "
              f"ms, bf16 {runs.median(1, cpu=True) * 1e3:.1f} ms "
              f"({runs.ratio(lambda t: t[0] / t[1], cpu=True):.2f}x), "
              + (f"oneDNN {runs.median(6, cpu=True) * 1e3:.1f} ms "
                 f"({runs.ratio(lambda t: t[0] / t[6], cpu=True):.2f}x), " if amx else "") +
              f"bf16 8/r {runs.median(5, cpu=True) * 1e3:.1f} "
              f"ms ({runs.ratio(lambda t: t[0] / t[5], cpu=True):.2f}x), bf16 w "
              f"{runs.median(2, cpu=True) * 1e3:.1f} ms ({runs.ratio(lambda t: t[0] / t[2], cpu=True):.2f}x); floor = matmul {mm_cpu * 1e3:.1f} + 48 scans "
              f"{scans_cpu * 1e3:.1f} = {(mm_cpu + scans_cpu) * 1e3:.1f} ms, fp32/floor "
              f"{runs.ratio(lambda t: t[0] / (t[3] * flops / mm_flops + 24 * t[4]), cpu=True):.2f}")
    print(f"(matmul FLOPs {flops / 1e9:.2f} G; bf16 = autocast for the matmuls, one autocast region per clip; "
          "oneDNN = the same with the matmuls through at::mm (F.linear's kernels; autocast casts the float32 weights "
          "first); bf16 8/r = the same as bf16 with 8 clips per autocast region, per clip (through oneDNN, autocast's "
          "cache casts the float32 weights once per region; the first clip included); bf16 w = one region per clip with the Linear "
          "weights stored in bf16 (ssamba.models.precision.cast_matmul_weights: no per-forward weight casts, same "
          "outputs); all run round-robin with the floor's matmuls and scan, the speedups and fp32/floor are medians "
          "of per-round ratios; targets: fp32 within 1.25x of the floor, bf16 >= 1.5x faster; on 2 threads the two "
          "mixers of each block pair run side by side, one per thread: ssamba.models.mamba.run_pair)")


def versus_ssast(quick: bool) -> None:
    threads = torch.get_num_threads()
    print(f"\n## SSAMBA-tiny vs SSAST-tiny (sdpa), B=1 forward, fp32, {threads} threads")
    print(f"{'tokens':>6} | {'SSAMBA ms':>10} {'SSAST ms':>10} {'ratio':>6} | {'fastest runs':>12} | "
          f"{'cpu-time':>9} | target")
    targets = {512: 1.2, 2048: 0.8, 22000: 0.15}
    for tokens in ((512, 2048) if quick else (512, 2048, 22000)):
        tdim = tokens_to_tdim(tokens)
        runs = 3 if tokens > 4096 else 7
        pair = Interleaved([forward_step(ssamba_tiny(tdim), tdim), forward_step(ssast_tiny(tdim), tdim)],
                           min_runs=runs)
        by_ratio = lambda t: t[0] / t[1]  # noqa: E731
        cpu_ratio = f"{pair.ratio(by_ratio, cpu=True):9.2f}" if threads == 1 else f"{'':9}"
        print(f"{tokens:6} | {pair.median(0) * 1e3:10.1f} {pair.median(1) * 1e3:10.1f} {pair.ratio(by_ratio):6.2f} | "
              f"{pair.fastest(0) / pair.fastest(1):12.2f} | {cpu_ratio} | <= {targets[tokens]}")
    print("(the two models run interleaved; ratio = median of the paired ratios)")


class StepRecorder(TorchDispatchMode):
    """What a training step hands to the kernels, forward and backward: each matmul's op, operand shapes and
    strides (with its count), and the shape of each mixer scan's input."""

    MATMULS = (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default)

    def __init__(self) -> None:
        super().__init__()
        self.matmuls: collections.Counter = collections.Counter()
        self.scans: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.MATMULS:
            key = tuple((tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)
            self.matmuls[(func, key, tuple(sorted((kwargs or {}).items())))] += 1
        elif func is torch.ops.ssamba_cpu.scan_fwd.default:
            self.scans.append(tuple(args[0][0].shape))  # u of the first direction: (batch, length, d_inner)
        return func(*args, **(kwargs or {}))


def _strided_randn(shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype = torch.float32
                   ) -> torch.Tensor:
    """Random values viewed with the given (possibly overlapping, e.g. expanded) strides."""
    needed = 1 + sum((n - 1) * s for n, s in zip(shape, stride) if n > 0)
    return torch.randn(needed, dtype=dtype).as_strided(shape, stride)


def matmul_replay(recorded: collections.Counter) -> tuple[Callable[[], object], float]:
    """The recorded matmuls, each as many times as the step ran it, on random operands of the recorded layouts,
    and their FLOPs: the step's matmul time at this machine's rate with the step's own shapes and layouts (the
    operands of a shape are reused, so they are warmer in the caches than in the step: a floor)."""
    calls, flops = [], 0.0
    for (func, key, kwargs), count in recorded.items():
        args = [_strided_randn(*a) if isinstance(a, tuple) else a for a in key]
        a, b = (args[1], args[2]) if func in (aten.addmm.default, aten.baddbmm.default) else (args[0], args[1])
        flops += count * 2.0 * a.numel() * b.shape[-1]
        calls.append((func, args, dict(kwargs), count))

    def run() -> None:
        for func, args, kwargs, count in calls:
            for _ in range(count):
                func(*args, **kwargs)
    return run, flops


def training_step() -> None:
    """Training steps at B=4, 128x1024 next to their floor, measured in the same rounds: the step's own matmuls
    (recorded from the step, replayed) at this machine's rate plus its mixer scans' forward and backward."""
    threads = torch.get_num_threads()
    print(f"\n## SSAMBA-tiny training step, B=4, 128x1024, float32 (the last row: bf16 autocast), {threads} threads "
          "(the trainer's fused optimizers)")
    x = torch.randn(4, 1024, 128)
    labels = (torch.rand(4, 527) < 0.05).float()
    torch.manual_seed(0)
    classifier = AudioClassifier(ModelConfig(encoder=preset("ssamba", "tiny"), task="classify", label_dim=527)).train()
    task = ClassificationTask(loss="bce", metric="mAP")  # AudioSet's fine-tuning loss
    torch.manual_seed(0)
    pretrain = MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny"), task="pretrain")).train()
    # what the trainer builds: Adam for fine-tuning, AdamW for pretraining, both fused
    fine_opt = build_optimizer(classifier, OptimConfig(name="adam", lr=1e-4))
    pre_opt = build_optimizer(pretrain, OptimConfig(name="adamw", lr=1e-4))

    def step(opt: torch.optim.Optimizer, loss: Callable[[], torch.Tensor], bf16: bool = False):
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as the trainer: forward and loss
                value = loss()
            value.backward()
            opt.step()
        return run

    fine_loss = lambda: task.train_step(classifier, (x, labels))["loss"]  # noqa: E731
    # name: (step, target)
    steps = {
        "fine-tuning (527-label head, BCE, Adam)": (step(fine_opt, fine_loss), "<= 1.0 s"),
        "pretraining, one pass (both heads), AdamW": (step(pre_opt, lambda: pretrain.pretraining_loss(
            x, mask_size=400, single_pass=True)["loss"]), "<= 1.0 s"),
        "pretraining, official joint objective: two passes": (step(pre_opt, lambda: pretrain.pretraining_loss(
            x, mask_size=400)["loss"]), "(no target: two forward passes, see below)"),
        "fine-tuning under bf16 autocast (train.amp=bf16)": (step(fine_opt, fine_loss, bf16=True),
                                                             "(no target: not fp32)"),
    }
    replays, scan_counts, shapes = [], [], set()
    for run, _ in steps.values():
        with StepRecorder() as rec:
            run()
        replays.append(matmul_replay(rec.matmuls))
        scan_counts.append(len(rec.scans))
        shapes.update(rec.scans)
    if len(shapes) != 1:
        raise RuntimeError(f"expected one scan shape in the training steps, got {sorted(shapes)}")
    batch, length, _ = shapes.pop()
    scan_fb = best_of(mixer_scan(length, batch=batch, backward=True), k=3)
    runs = Interleaved([run for run, _ in steps.values()] + [fn for fn, _ in replays] + [scan_fb], min_runs=5,
                       min_time=0.0)
    k = len(steps)
    print(f"floor = the step's matmuls (recorded in the step, replayed on random operands of the same layouts) + its "
          f"mixer scans, forward and backward at the step's shape (B={batch}, L={length}, both directions)")
    print(f"{'step':50} | {'median s':>8} {'fastest':>7} | {'matmul s':>8} {'GF/s':>6} {'scans s':>7} "
          f"{'floor s':>7} | {'step/floor':>10} | target")
    for i, (name, (_, target)) in enumerate(steps.items()):
        mm_time, scans = runs.median(k + i), scan_counts[i] * runs.median(2 * k)
        ratio = runs.ratio(lambda t, i=i: t[i] / (t[k + i] + scan_counts[i] * t[2 * k]))
        print(f"{name:50} | {runs.median(i):8.3f} {runs.fastest(i):7.3f} | {mm_time:8.3f} "
              f"{replays[i][1] / mm_time / 1e9:6.1f} {scans:7.3f} {mm_time + scans:7.3f} | {ratio:10.2f} | {target}")
    print(f"(steps, matmul replays and one scan forward+backward (best of 3) run round-robin; step/floor = median of "
          f"per-round ratios; scans per step: {', '.join(map(str, scan_counts))}.  The official pretraining objective "
          f"runs the encoder twice per batch (independent masks), twice a one-pass step's work: its floor alone is "
          f"twice the one-pass floor.  Under bf16 autocast the replayed matmuls are the step's bf16 ones; the scans "
          f"stay the float32 replay)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip L=22000 and 22k tokens")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the scan table, SSAST comparison and training step (default: torch's)")
    parser.add_argument("--sections", default="scan,rate,latency,ssast,train",
                        help="comma-separated subset of: scan, rate, latency, ssast, train")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    if not cpu.available():
        raise SystemExit("the CPU kernels could not be built; nothing to benchmark")
    taken = cpus_taken()
    busy = f"{taken[0]:.2f} CPUs busy with other processes, {taken[1]:.2f} stolen by the hypervisor" if taken else \
        "CPU use of other processes unknown (no /proc/stat)"
    print(f"torch {torch.__version__}, kernels: {cpu.isa()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads; over the last second {busy}")
    if taken and sum(taken) > 0.25:
        print("note: medians are inflated while other work takes CPUs, and multi-threaded runs wait on preempted "
              "threads; the fastest runs are closer to an idle machine")
    start = cpu_jiffies()
    if "scan" in sections:
        scan_table(args.quick)
    if "rate" in sections:
        single_thread_rate()
    if "latency" in sections:
        model_latency()
    if "ssast" in sections:
        versus_ssast(args.quick)
    if "train" in sections:
        training_step()
    end = cpu_jiffies()
    if start and end and end[0] > start[0]:
        print(f"\nstolen by the hypervisor during the run: {100 * (end[2] - start[2]) / (end[0] - start[0]):.1f}% "
              f"of the machine's CPU time")


if __name__ == "__main__":
    main()
