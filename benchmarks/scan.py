"""Benchmark of the CPU selective scan and of SSAMBA-tiny on CPU (issue 3).

Prints: the scan per backend (B in {1, 4}, L in {512, 1212, 4096, 22000}; forward and forward+backward time,
state updates per second per core, peak memory); the single-thread scan rate; SSAMBA-tiny forward latency at
512 tokens (1 and 2 threads, fp32 and bf16 autocast) with its floor (matmul FLOPs at the measured matmul rate plus
48 scans at the measured scan rate); SSAMBA-tiny vs SSAST-tiny (sdpa) at 512, 2k and 22k tokens; an SSAMBA-tiny
training step (B=4, 128x1024).  Times are medians; ratios come from the same run.

    PYTHONPATH=src python benchmarks/scan.py [--quick] [--threads N]

On a machine shared with other jobs, numbers move with the load: the header prints the load average.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ssamba.models import build_encoder, scan
from ssamba.models.config import ModelConfig, preset
from ssamba.models.scan import cpu, ops
from ssamba.pretrain.model import MaskedPatchModel

D_INNER, D_STATE = 384, 16  # SSAMBA-tiny: d_inner = 2 * 192
LIBC = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None


# ------------------------------------------------------------------------------------------------- measuring
def timed(fn: Callable[[], object], min_runs: int = 5, min_time: float = 0.5, warmup: int = 1,
          max_runs: int = 200) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_time and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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
    if backward:
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = scan.selective_scan(*leaves, delta_softplus=True, backend=backend)
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            scan.selective_scan(*inputs, delta_softplus=True, backend=backend)


def scan_table(quick: bool) -> None:
    threads = torch.get_num_threads()
    print(f"\n## Selective scan, one direction (d_inner={D_INNER}, d_state={D_STATE}, softplus, D skip, z gate), "
          f"{threads} threads")
    print("reference only where affordable: forward for B*L <= 4096, forward+backward for B*L <= 2048 "
          "(its Python time loop takes ~0.1 ms per step; backward keeps every state)")
    print("mamba_ssm: CUDA only, not measured on this CPU machine")
    header = (f"{'backend':9} {'B':>2} {'L':>6} | {'fwd ms':>9} {'fwd+bwd ms':>11} | {'upd/s/core':>10} | "
              f"{'peak MB fwd':>11} {'fwd+bwd':>8} | {'output MB':>9}")
    print(header)
    print("-" * len(header))
    lengths = (512, 1212, 4096) if quick else (512, 1212, 4096, 22000)
    for batch in (1, 4):
        for length in lengths:
            inputs = scan_inputs(batch, length)
            updates = batch * length * D_INNER * D_STATE
            out_mb = batch * length * D_INNER * 4 / 2**20
            for backend in ("cpu", "reference"):
                if backend == "reference" and batch * length > 4096:
                    print(f"{backend:9} {batch:2} {length:6} | {'skipped':>9}")
                    continue
                fwd = timed(lambda: run_scan(backend, inputs, False), min_runs=3 if backend == "reference" else 5)
                mem_f = peak_memory_mb(lambda: run_scan(backend, inputs, False))
                if backend == "cpu" or batch * length <= 2048:
                    both = timed(lambda: run_scan(backend, inputs, True), min_runs=3, warmup=1)
                    mem_b = peak_memory_mb(lambda: run_scan(backend, inputs, True))
                    both_s, mem_b_s = f"{both * 1e3:11.2f}", _mb(mem_b)
                else:
                    both_s, mem_b_s = f"{'skipped':>11}", f"{'':>8}"
                print(f"{backend:9} {batch:2} {length:6} | {fwd * 1e3:9.2f} {both_s} | "
                      f"{updates / fwd / threads:10.2e} | {_mb(mem_f):>11} {mem_b_s:>8} | {out_mb:9.1f}")


def _mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def single_thread_rate() -> float:
    inputs = scan_inputs(1, 4096)
    with with_threads(1):
        t = timed(lambda: run_scan("cpu", inputs, False), min_runs=10)
    rate = 4096 * D_INNER * D_STATE / t
    print(f"\nscan forward, 1 thread, B=1 L=4096: {t * 1e3:.2f} ms = {rate:.2e} state updates/s/core "
          f"(target >= 3e9)")
    inputs = scan_inputs(4, 512)
    both = timed(lambda: run_scan("cpu", inputs, True), min_runs=10)
    print(f"scan forward+backward, B=4 L=512, {torch.get_num_threads()} threads: {both * 1e3:.2f} ms "
          f"(target <= 6 ms on 2 threads)")
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


def forward_time(model: torch.nn.Module, tdim: int, bf16: bool = False, min_runs: int = 5) -> float:
    x = torch.randn(1, tdim, 128)

    def step():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)
    return timed(step, min_runs=min_runs, min_time=1.0)


def matmul_flops(tokens: int) -> tuple[float, list[tuple[int, int, int]]]:
    """SSAMBA-tiny's matmul FLOPs for one clip and its (rows, in, out) linear shapes, per layer and patch embed."""
    d, e, n, r = 192, D_INNER, D_STATE, 12
    per_layer = [(tokens, d, 2 * e), (tokens, e, r + 2 * n), (tokens, e, r + 2 * n), (tokens, r, e), (tokens, r, e),
                 (tokens, e, d)]
    shapes = per_layer * 24 + [(tokens, 256, d)]
    return sum(2.0 * m * k * o for m, k, o in shapes), per_layer + [(tokens, 256, d)]


def matmul_rate(tokens: int) -> float:
    """fp32 FLOP/s of this machine on SSAMBA-tiny's own linear shapes (timed one layer's worth at a time)."""
    _, shapes = matmul_flops(tokens)
    xs = [(torch.randn(m, k), torch.randn(o, k)) for m, k, o in shapes]
    t = timed(lambda: [F.linear(x, w) for x, w in xs], min_runs=10)
    return sum(2.0 * m * k * o for m, k, o in shapes) / t


def mixer_scan_time(tokens: int) -> float:
    """One mixer's scan op (both directions, softplus, D, gate, average) at B=1."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    dbl = [r(1, tokens, 12 + 2 * D_STATE) for _ in range(2)]
    args = ([r(1, tokens, D_INNER) for _ in range(2)], [r(1, tokens, D_INNER) * 0.5 - 1 for _ in range(2)],
            [-torch.exp(r(D_INNER, D_STATE) * 0.5) for _ in range(2)],
            [t[..., 12:12 + D_STATE] for t in dbl], [t[..., 12 + D_STATE:] for t in dbl],
            [r(D_INNER) for _ in range(2)], [r(D_INNER) for _ in range(2)], r(1, tokens, D_INNER), True)
    with torch.no_grad():
        return timed(lambda: ops.scan(*args), min_runs=20)


def model_latency() -> None:
    print("\n## SSAMBA-tiny forward, B=1, 512 tokens (128x1024 input)")
    model = ssamba_tiny(1024)
    flops, _ = matmul_flops(512)
    print(f"{'threads':>7} | {'fp32 ms':>8} {'bf16 ms':>8} {'bf16 speedup':>12} | {'matmul GF/s':>11} "
          f"{'matmul ms':>9} {'48 scans ms':>11} {'floor ms':>8} {'fp32/floor':>10}")
    for threads in (1, 2):
        with with_threads(threads):
            fp32 = forward_time(model, 1024)
            bf16 = forward_time(model, 1024, bf16=True)
            rate = matmul_rate(512)
            scans = 24 * mixer_scan_time(512)
        floor = flops / rate + scans
        print(f"{threads:7} | {fp32 * 1e3:8.1f} {bf16 * 1e3:8.1f} {fp32 / bf16:11.2f}x | {rate / 1e9:11.1f} "
              f"{flops / rate * 1e3:9.1f} {scans * 1e3:11.1f} {floor * 1e3:8.1f} {fp32 / floor:10.2f}")
    print(f"(matmul FLOPs {flops / 1e9:.2f} G; targets: fp32 within 1.25x of the floor, bf16 >= 1.5x faster)")


def versus_ssast(quick: bool) -> None:
    threads = torch.get_num_threads()
    print(f"\n## SSAMBA-tiny vs SSAST-tiny (sdpa), B=1 forward, fp32, {threads} threads")
    print(f"{'tokens':>6} | {'SSAMBA ms':>10} {'SSAST ms':>10} {'ratio':>6} | target")
    targets = {512: 1.2, 2048: 0.8, 22000: 0.15}
    for tokens in ((512, 2048) if quick else (512, 2048, 22000)):
        tdim = tokens_to_tdim(tokens)
        runs = 1 if tokens > 4096 else 5
        a = forward_time(ssamba_tiny(tdim), tdim, min_runs=runs)
        b = forward_time(ssast_tiny(tdim), tdim, min_runs=runs)
        print(f"{tokens:6} | {a * 1e3:10.1f} {b * 1e3:10.1f} {a / b:6.2f} | <= {targets[tokens]}")


def training_step() -> None:
    threads = torch.get_num_threads()
    print(f"\n## SSAMBA-tiny training step, B=4, 128x1024, fp32, {threads} threads (AdamW)")
    torch.manual_seed(0)
    model = MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny"), task="pretrain")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(4, 1024, 128)
    for single in (True, False):
        def step():
            opt.zero_grad(set_to_none=True)
            model.pretraining_loss(x, mask_size=400, single_pass=single)["loss"].backward()
            opt.step()
        t = timed(step, min_runs=3, min_time=0.0)
        what = "one forward pass (both heads)" if single else "official joint objective, two forward passes"
        print(f"{what:46}: {t:.3f} s (target <= 1.0 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip L=22000 and 22k tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu.available():
        raise SystemExit("the CPU kernels could not be built; nothing to benchmark")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    print(f"torch {torch.__version__}, kernels: {cpu.isa()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads, load average {load}")
    scan_table(args.quick)
    single_thread_rate()
    model_latency()
    versus_ssast(args.quick)
    training_step()


if __name__ == "__main__":
    main()
