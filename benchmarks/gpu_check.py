"""GPU check of the triton scan backend (issue 8), in one short run on a CUDA machine.

1. Correctness on CUDA: the triton scan (forward and every gradient) against the float64 reference on small and
   model-sized shapes, and SSAMBA-tiny (24 blocks) through the triton backend against the reference backend.
2. Launch-shape sweep of the scan at B=2, d_inner=384 (SSAMBA-tiny), N=16, L=16384; the fastest forward is used
   by the scan sections below (3, 3c).
3. Scan time vs its memory-bandwidth floor (bytes of u, delta, z, B, C read and y written, at the copy bandwidth
   measured here), L = 1k..150k; reverse-scan forward, forward+backward time and peak memory; then the fused
   conv + SiLU against F.conv1d + SiLU; both scan directions of a mixer in one launch against two; what the
   backend's own tuning chooses for SSAMBA-tiny at each token count (3d).  The model sections run the models as a
   user would, with the launch shapes tuned per shape.
4. SSAMBA-tiny vs SSAST-tiny (sdpa and naive attention), batch 2, 1k-150k frames: inference time and peak memory
   through ``ssamba.bench.efficiency`` (one subprocess per configuration), written to ``OUT/bench``; then at 4k
   and 22k tokens with TF32 matmuls in both models (``OUT/bench-tf32``; the first table is full float32).
5. Eager vs CUDA-graph replay of both models at 4k and 22k tokens (the GPU's own time, without launch overhead),
   SSAMBA tuned, and on the loop and the serial launch shape set.

    PYTHONPATH=src python benchmarks/gpu_check.py --out DIR [--budget-s 420]

Sections stop starting new work once the time budget is spent, and say so.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from ssamba.models.scan import selective_scan, triton_ops
from ssamba.models.scan.triton_ops import TritonConfig

D_INNER, D_STATE = 384, 16
START = time.monotonic()
LINES: list[str] = []
BANDWIDTH = [3e12]  # device copy bandwidth in bytes/s, measured in main()


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def elapsed() -> float:
    return time.monotonic() - START


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(batch: int, dim: int, length: int, n: int, *, z: bool = True, bias: bool = True,
           noncontig: bool = False, seed: int = 0) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    out = dict(u=r(batch, dim, length), delta=0.5 * r(batch, dim, length), A=-torch.exp(0.5 * r(dim, n)),
               B=r(batch, n, length), C=r(batch, n, length), D=r(dim), z=r(batch, dim, length) if z else None,
               delta_bias=0.3 * r(dim) if bias else None)
    if noncontig:
        for k in ("u", "delta", "B", "C"):
            out[k] = out[k].transpose(1, 2).contiguous().transpose(1, 2)
    return out


def pair_inputs(batch: int, length: int, seed: int = 0, rank: int = 12):
    """Both directions' inputs of ``triton_pair.scan_pair`` at SSAMBA-tiny's sizes (dt, B, C rows of one projection)
    and the gate z."""
    from ssamba.models.scan import triton_pair

    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    sides = []
    for _ in range(2):
        dt, b, c = r(batch, rank + 2 * D_STATE, length).split([rank, D_STATE, D_STATE], dim=1)
        sides.append(triton_pair.Direction(r(batch, D_INNER, length), dt, b, c, 0.5 * r(D_INNER, D_STATE), r(D_INNER),
                                           0.3 * r(D_INNER), 0.3 * r(D_INNER, rank)))
    return sides[0], sides[1], r(batch, D_INNER, length)


def pair_reference(side, z: torch.Tensor, valid: int, reverse: bool) -> torch.Tensor:
    """One direction of the pair in float64 through the reference scan (delta = W_dt dt, identity steps from
    ``valid`` on)."""
    delta = torch.einsum("dr,brl->bdl", side.w_dt.double(), side.dt.double())
    delta[..., valid:] = float("-inf")
    return selective_scan(side.u.double(), delta, -torch.exp(side.A_log.double()), side.B.double(), side.C.double(),
                          side.D.double(), z.double(), side.delta_bias.double(), True, backend="reference",
                          reverse=reverse)


def run(fn, inp: dict, dtype: torch.dtype, reverse: bool = False):
    leaves = {k: (v.detach().to(dtype).requires_grad_() if v is not None else None) for k, v in inp.items()}
    out = fn(**leaves, delta_softplus=True, reverse=reverse)
    (out * torch.linspace(-1, 1, out.numel(), dtype=dtype, device="cuda").reshape(out.shape)).sum().backward()
    return out, {k: v.grad for k, v in leaves.items() if v is not None}


def bench_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100)


# ------------------------------------------------------------------------------------------------ sections
def correctness() -> bool:
    say("## 1. Correctness on CUDA (relative error vs float64 reference; limit 1e-4)")
    say("| case | config | out | worst gradient |")
    say("|---|---|---|---|")
    ok = True
    cases = [((2, 3, 19, 4), {}, TritonConfig(2, 8, 1)), ((2, 5, 17, 5), dict(noncontig=True), TritonConfig(2, 8, 1)),
             ((1, 3, 7, 3), dict(z=False, bias=False), TritonConfig(2, 8, 1)),
             ((2, 5, 17, 5), dict(noncontig=True), TritonConfig(2, 8, 1, "loop")),
             ((2, D_INNER, 1000, D_STATE), {}, None), ((1, 64, 4099, D_STATE), {}, None),
             ((2, D_INNER, 2048, D_STATE), dict(noncontig=True), None),
             ((2, D_INNER, 1000, D_STATE), {}, TritonConfig(1, 512, 4, "loop")),
             ((1, 64, 4099, D_STATE), {}, TritonConfig(1, 1024, 4, "loop")),
             ((2, D_INNER, 2048, D_STATE), dict(noncontig=True), TritonConfig(2, 512, 4, "loop")),
             ((2, D_INNER, 1000, D_STATE), dict(reverse=True), None),
             ((2, D_INNER, 1000, D_STATE), dict(reverse=True), TritonConfig(2, 32, 4, "tile")),
             ((2, 5, 37, 5), {}, TritonConfig(2, 8, 1, "chunked")),
             ((2, D_INNER, 2048, D_STATE), dict(noncontig=True), TritonConfig(1, 256, 4, "chunked")),
             ((1, 64, 4099, D_STATE), {}, TritonConfig(1, 512, 4, "chunked")),
             ((2, D_INNER, 1000, D_STATE), dict(reverse=True), TritonConfig(1, 128, 2, "chunked")),
             ((2, 5, 37, 5), {}, TritonConfig(1, 16, 1, "serial")),
             ((2, D_INNER, 1000, D_STATE), {}, TritonConfig(1, 1024, 2, "serial")),
             ((2, D_INNER, 2048, D_STATE), dict(noncontig=True), TritonConfig(1, 512, 1, "serial")),
             ((1, 64, 4099, D_STATE), {}, TritonConfig(1, 2048, 4, "serial", stages=2)),
             ((2, D_INNER, 3000, D_STATE), dict(reverse=True), TritonConfig(1, 1024, 2, "serial")),
             ((2, D_INNER, 3000, D_STATE), dict(reverse=True), TritonConfig(1, 4096, 8, "serial", stages=2)),
             ((2, D_INNER, 3000, D_STATE), {}, TritonConfig(1, 512, 1, "serial", unroll=2)),
             ((2, D_INNER, 3000, D_STATE), dict(reverse=True), TritonConfig(1, 1024, 2, "serial", unroll=2)),
             ((2, 5, 37, 5), {}, TritonConfig(1, 32, 1, "serial", unroll=2))]  # odd state count: one at a time
    triton_scan = lambda **kw: selective_scan(**kw, backend="triton")  # noqa: E731
    reference_scan = lambda **kw: selective_scan(**kw, backend="reference")  # noqa: E731
    for shape, kw, config in cases:
        triton_ops.set_config(config)
        reverse = kw.pop("reverse", False)
        inp = inputs(*shape, **kw)
        out, grads = run(triton_scan, inp, torch.float32, reverse)
        out64, grads64 = run(reference_scan, inp, torch.float64, reverse)
        if reverse:
            kw = dict(kw, reverse=True)
        errs = {k: rel_err(g, grads64[k]) for k, g in grads.items()}
        worst = max(errs, key=errs.get)
        e_out = rel_err(out, out64)
        good = e_out < 1e-4 and errs[worst] < 1e-4
        ok &= good
        say(f"| {shape} {kw or ''} | {config} | {e_out:.1e} | {worst} {errs[worst]:.1e}"
            f"{'' if good else ' FAIL'} |")
    for config in (TritonConfig(1, 512, 4, "chunked"), TritonConfig(1, 128, 2, "chunked"),
                   TritonConfig(1, 1024, 2, "serial"), TritonConfig(1, 2048, 4, "serial", stages=2),
                   TritonConfig(1, 512, 1, "serial", unroll=2)):
        triton_ops.set_config(config)
        inp = inputs(2, D_INNER, 3000, D_STATE)
        with torch.no_grad():
            out = selective_scan(**inp, delta_softplus=True, backend="triton")
            out64 = selective_scan(**{k: v.double() if v is not None else None for k, v in inp.items()},
                                   delta_softplus=True, backend="reference")
        e_out = rel_err(out, out64)
        ok &= e_out < 1e-4
        say(f"| (2, {D_INNER}, 3000, {D_STATE}) no grad | {config} | {e_out:.1e}{'' if e_out < 1e-4 else ' FAIL'} | |")
    from ssamba.models.scan import triton_pair

    for config in (TritonConfig(1, 512, 1, "serial", unroll=2), TritonConfig(1, 1024, 2, "serial")):
        first, second, z = pair_inputs(2, 3008)  # both directions in one launch, averaged by atomic adds
        with torch.no_grad():
            out = triton_pair.scan_pair(first, second, z, 2990, config)
        want = (pair_reference(first, z, 2990, False) + pair_reference(second, z, 2990, True)) / 2
        e_out = rel_err(out, want)
        ok &= e_out < 1e-4
        say(f"| (2, {D_INNER}, 3008, {D_STATE}) both directions in one launch (triton_pair), dt_proj in the kernel, "
            f"no grad | {config} | {e_out:.1e}{'' if e_out < 1e-4 else ' FAIL'} | |")

    from ssamba.models.scan import triton_conv

    for backwards in (False, True):
        g = torch.Generator(device="cuda").manual_seed(2)
        x = torch.randn(2, D_INNER, 5000, device="cuda", generator=g)
        w = 0.5 * torch.randn(D_INNER, 1, 4, device="cuda", generator=g)
        b = 0.1 * torch.randn(D_INNER, device="cuda", generator=g)
        e_out = rel_err(triton_conv.conv_silu(x, w, b, backwards),
                        triton_conv.conv_silu_reference(x.double(), w.double(), b.double(), backwards))
        ok &= e_out < 1e-5
        say(f"| conv + SiLU (2, {D_INNER}, 5000){' anti-causal' if backwards else ''} | fused | {e_out:.1e}"
            f"{'' if e_out < 1e-5 else ' FAIL'} | |")

    from ssamba.models import build_encoder
    from ssamba.models.config import preset

    torch.manual_seed(0)
    enc = build_encoder(preset("ssamba", "tiny", input_tdim=1024, drop_path_rate=0.0)).cuda()
    x = torch.randn(2, 1024, 128, device="cuda")
    weight = None
    res = {}
    for label, backend, config in (("reference", "reference", None), ("tuned", "triton", None),
                                   ("serial", "triton", TritonConfig(1, 512, 1, "serial", unroll=2))):
        triton_ops.set_config(config)
        for m in enc.modules():
            if hasattr(m, "scan_backend"):
                m.scan_backend = backend
        enc.zero_grad()
        out = enc(x)
        if weight is None:  # a fixed random projection: out.square().mean() has ~zero gradient after the LayerNorm
            weight = torch.randn(out.shape, generator=torch.Generator(device="cuda").manual_seed(1), device="cuda")
        (out.float() * weight).sum().backward()
        res[label] = (out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    triton_ops.set_config(None)
    names = list(res["reference"][1])
    flat = lambda grads: torch.cat([grads[n].flatten() for n in names])  # noqa: E731
    for label in ("tuned", "serial"):
        e_out = rel_err(res[label][0], res["reference"][0])
        e_all = rel_err(flat(res[label][1]), flat(res["reference"][1]))
        errs = {n: rel_err(res[label][1][n], res["reference"][1][n]) for n in names}
        worst = max(errs, key=errs.get)
        good = e_out < 1e-4 and e_all < 1e-4
        ok &= good
        say(f"| SSAMBA-tiny 24 blocks, 512 tokens, triton (flip-free mixer) vs reference backend (literal spec "
            f"path), fp32 | {label} | {e_out:.1e} | all gradients {e_all:.1e}; worst parameter {worst} "
            f"{errs[worst]:.1e} (norm {res['reference'][1][worst].norm():.1e}){'' if good else ' FAIL'} |")
    # inference: the trunk's residual adds and norms in one Triton pass per block pair (triton_norms); with the
    # serial forward, dt_proj inside the scan kernel too
    enc.eval()
    outs = {}
    with torch.no_grad():
        for label, backend, config in (("reference", "reference", None), ("tuned", "triton", None),
                                       ("serial", "triton", TritonConfig(1, 512, 1, "serial", unroll=2))):
            triton_ops.set_config(config)
            enc.config.scan_backend = backend
            for m in enc.modules():
                if hasattr(m, "scan_backend"):
                    m.scan_backend = backend
            outs[label] = enc(x)
        fused = enc._fused_add_norms(outs["tuned"][:, :1]) is not None
    triton_ops.set_config(None)
    enc.config.scan_backend = None
    for label in ("tuned", "serial"):
        e_out = rel_err(outs[label], outs["reference"])
        good = fused and e_out < 1e-4
        ok &= good
        say(f"| SSAMBA-tiny inference (no grad, eval): fused add + norms per pair {'taken' if fused else 'NOT taken'}"
            f"{'; both directions in one conv and one scan launch, dt_proj in the kernel' if label == 'serial' else ''}"
            f" vs the eager stream on the reference backend | {label} | {e_out:.1e} | {'' if good else 'FAIL'} |")
    say(f"\ncorrectness: {'PASS' if ok else 'FAIL'} ({elapsed():.0f} s)\n")
    return ok


def copy_bandwidth() -> float:
    x = torch.empty(2 * 2**30 // 4, device="cuda")
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3)


def scan_bytes(batch: int, length: int, dtype_bytes: int = 4) -> int:
    return dtype_bytes * (4 * batch * D_INNER * length + 2 * batch * D_STATE * length)  # u, delta, z, y; B, C


def scan_times(batch: int, length: int) -> tuple[float, float, float]:
    """(forward ms, forward+backward ms, peak MB of forward+backward) of the triton scan."""
    inp = inputs(batch, D_INNER, length, D_STATE)
    with torch.no_grad():
        fwd = bench_ms(lambda: triton_ops.selective_scan_triton(**inp, delta_softplus=True))
    return fwd, *_scan_backward_times(batch, length, inp)


def reverse_ms(batch: int, length: int) -> float:
    """Forward ms of a reverse scan (negated time strides), which half of the mixer's scans are."""
    inp = inputs(batch, D_INNER, length, D_STATE)
    with torch.no_grad():
        return bench_ms(lambda: triton_ops.selective_scan_triton(**inp, delta_softplus=True, reverse=True))


def _scan_backward_times(batch: int, length: int, inp: dict) -> tuple[float, float]:
    """(forward+backward ms, peak MB of forward+backward)."""
    leaves = {k: (v.requires_grad_() if v is not None else None) for k, v in inp.items()}
    grad = torch.randn(batch, D_INNER, length, device="cuda")

    def step():
        out = triton_ops.selective_scan_triton(**leaves, delta_softplus=True)
        out.backward(grad)

    both = bench_ms(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return both, peak


def sweep(budget: float, configs: list[TritonConfig] | None = None) -> TritonConfig:
    """The fastest forward of the launch shapes (the fastest forward + backward is reported too), the serial ones
    first (they came after the last GPU run: benchmarks/triton_ptx.py counts a third of the loop forward's
    instructions per step)."""
    say("## 2. Launch shapes (B=2, d_inner=384, N=16, L=16384; forward no-grad / forward+backward, ms)")
    say("| block_d, chunk, warps, algo[, stages[, unroll]] | forward | forward+backward |")
    say("|---|---|---|")
    configs = configs or [TritonConfig(*c) for c in (
        (1, 512, 1, "serial", 1, 2), (1, 512, 1, "serial"), (1, 1024, 2, "serial"), (1, 1024, 2, "serial", 1, 2),
        (1, 2048, 4, "serial"), (1, 4096, 8, "serial"), (1, 512, 1, "serial", 2), (1, 1024, 2, "serial", 2),
        (1, 512, 4, "loop"), (1, 2048, 4, "loop"),
        (1, 512, 4, "chunked"), (1, 256, 2, "chunked"), (1, 512, 2, "chunked"), (1, 256, 1, "chunked"),
        (1, 1024, 4, "chunked"), (2, 256, 4, "chunked"))]
    best, best_t = TritonConfig(), float("inf")
    best_fwd, best_fwd_t = TritonConfig(), float("inf")
    for c in configs:
        if elapsed() > budget:
            say(f"| {c.spec()} | skipped: time budget | |")
            continue
        triton_ops.set_config(c)
        try:
            fwd, both, _ = scan_times(2, 16384)
        except Exception as exc:  # a shape that does not compile or runs out of resources
            say(f"| {c.spec()} | failed: {type(exc).__name__}: {str(exc)[:80]} | |")
            continue
        say(f"| {c.spec()} | {fwd:.3f} | {both:.3f} |")
        if fwd + both < best_t:
            best, best_t = c, fwd + both
        if fwd < best_fwd_t:
            best_fwd, best_fwd_t = c, fwd
    triton_ops.set_config(None)
    say(f"\nfastest (forward + forward+backward): {best}; fastest forward (used by sections 3 and 3c): {best_fwd}\n")
    return best_fwd


def scan_table(config: TritonConfig, bandwidth: float, budget: float) -> None:
    say(f"## 3. Scan vs memory-bandwidth floor (B=2, d_inner=384, N=16, fp32; copy bandwidth {bandwidth / 1e12:.2f}"
        f" TB/s; {config})")
    say("| L | forward ms | floor ms | forward / floor | reverse forward ms | forward+backward ms | fwd+bwd peak MB |")
    say("|---|---|---|---|---|---|---|")
    triton_ops.set_config(config)
    for length in (1024, 4096, 16384, 65536, 150000):
        if elapsed() > budget:
            say(f"| {length} | skipped: time budget | | | | | |")
            continue
        fwd, both, peak = scan_times(2, length)
        floor = scan_bytes(2, length) / bandwidth * 1e3
        say(f"| {length} | {fwd:.3f} | {floor:.3f} | {fwd / floor:.2f} | {reverse_ms(2, length):.3f} | {both:.3f} "
            f"| {peak:.0f} |")
    triton_ops.set_config(None)
    say("")


def conv_table(budget: float) -> None:
    """The fused conv + SiLU kernel against F.conv1d + SiLU (what the step-by-step path runs), B=2, d_inner=384."""
    from ssamba.models.scan import triton_conv

    say("## 3b. Depthwise conv + SiLU, fused (Triton) vs F.conv1d + SiLU (ms, no grad)")
    say("| L | direction | fused | F.conv1d + SiLU | floor |")
    say("|---|---|---|---|---|")
    for length in (4096, 22000, 75000):
        for backwards in (False, True):
            if elapsed() > budget:
                say(f"| {length} | skipped: time budget | | | |")
                continue
            x = torch.randn(2, D_INNER, length, device="cuda")
            w, b = torch.randn(D_INNER, 1, 4, device="cuda"), torch.randn(D_INNER, device="cuda")
            with torch.no_grad():
                fused = bench_ms(lambda: triton_conv.conv_silu(x, w, b, backwards))
                ref = bench_ms(lambda: triton_conv.conv_silu_reference(x, w, b, backwards))
            floor = 2 * x.numel() * 4 / BANDWIDTH[0] * 1e3
            say(f"| {length} | {'anti-causal' if backwards else 'causal'} | {fused:.3f} | {ref:.3f} | {floor:.3f} |")
    say("")


def pair_table(config: TritonConfig, budget: float) -> None:
    """The mixer's two scans at inference: one pair launch averaging in the kernel (``triton_pair``) against two
    single-direction launches and their sum at the same serial launch shape (``config`` if it is a serial one, else
    "1,512,1,serial,1,2") and at the default (what the mixer runs when the pair is not faster)."""
    from ssamba.models.scan import triton_pair

    config = config if config.algo == "serial" else TritonConfig(1, 512, 1, "serial", unroll=2)
    say(f"## 3c. Both scan directions of a mixer, inference (B=2, d_inner=384, N=16, dt_proj in the kernel; {config};"
        f" ms)")
    say(f"| L | one pair launch | two launches + add | ratio | two launches + add, {TritonConfig().spec()} |")
    say("|---|---|---|---|---|")
    for length in (4096, 22016, 75008):
        if elapsed() > budget:
            say(f"| {length} | skipped: time budget | | | |")
            continue
        first, second, z = pair_inputs(2, length)

        def two(launch: TritonConfig):
            y = [triton_ops.selective_scan_triton(s.u, None, -torch.exp(s.A_log), s.B, s.C, s.D, z, s.delta_bias,
                                                  True, rev, delta_proj=(s.w_dt, s.dt), valid_length=length,
                                                  config=launch)
                 for s, rev in ((first, False), (second, True))]
            return y[0].add_(y[1])

        with torch.no_grad():
            pair = bench_ms(lambda: triton_pair.scan_pair(first, second, z, length, config))
            single = bench_ms(lambda: two(config))
            loop = bench_ms(lambda: two(TritonConfig()))
        say(f"| {length} | {pair:.3f} | {single:.3f} | {pair / single:.2f} | {loop:.3f} |")
    say("")


def tuned_table(budget: float, tokens: list[int], batch: int = 2) -> None:
    """What the backend's own tuning (``triton_tune``, on by default on CUDA) chooses for SSAMBA-tiny: one inference
    forward per token count, and one training step at the smallest, each shape's candidates timed as whole calls
    (a mixer's two directions as one pair launch or as two scans)."""
    from ssamba.models import build_encoder
    from ssamba.models.config import preset
    from ssamba.models.scan import triton_tune

    triton_ops.set_config(None)
    os.environ.pop(triton_ops.CONFIG_VAR, None)
    triton_tune.clear()
    say(f"## 3d. Launch shapes the backend tunes (SSAMBA-tiny, batch {batch}; ms per call of each candidate)")
    say("| tokens | mode | L bucket | chosen | " + " | ".join(c.spec() for c in triton_ops.CANDIDATES) + " |")
    say("|---|---|---|---|" + "---|" * len(triton_ops.CANDIDATES))
    runs = [(n, False) for n in tokens] + [(min(tokens), True)]
    for n, train in runs:
        if elapsed() > budget:
            say(f"| {n} | {'training' if train else 'inference'} | skipped: time budget |")
            continue
        frames = n // 8 * 16
        torch.manual_seed(0)
        enc = build_encoder(preset("ssamba", "tiny", input_tdim=frames, drop_path_rate=0.0)).cuda().train(train)
        x = torch.randn(batch, frames, 128, device="cuda")
        before = set(triton_tune.decisions())
        if train:
            enc(x).float().pow(2).mean().backward()
        else:
            with torch.inference_mode():
                enc(x)
        for key, decision in triton_tune.decisions().items():
            if key not in before:
                times = " | ".join(f"{decision.seconds.get(c, float('nan')) * 1e3:.3f}"
                                   for c in triton_ops.CANDIDATES)
                say(f"| {n} | {key.mode} | {key.length} | {decision.choice.spec()} | {times} |")
        del enc, x
        torch.cuda.empty_cache()
    say("")


def model_table(out: Path, budget_s: float, tokens: list[int], precision: str = "highest") -> None:
    """The efficiency benchmark as a user runs it (the scan's launch shapes tuned in each subprocess's warm-up);
    ``precision`` "high" lets both models' float32 matmuls run in TF32 (torch.set_float32_matmul_precision),
    written to ``OUT/bench-tf32``."""
    from ssamba.bench.efficiency import BenchSpec, run_benchmark

    tf32 = precision != "highest"
    say(f"## 4{'b' if tf32 else ''}. SSAMBA-tiny vs SSAST-tiny, batch 2, inference (ssamba.bench.efficiency"
        f"{', TF32 matmuls' if tf32 else ''})")
    os.environ.pop(triton_ops.CONFIG_VAR, None)
    spec = BenchSpec(sizes=["tiny"], batches=[2], tokens=tokens, repeats=3, warmup=1, device="cuda",
                     timeout_s=min(90.0, max(30.0, budget_s)), time_budget_s=budget_s, matmul_precision=precision)
    result = run_benchmark(spec, out / ("bench-tf32" if tf32 else "bench"))
    say(result.markdown)


def graph_table(budget: float, tokens: tuple[int, ...] = (4096, 22000), batch: int = 2) -> None:
    """Eager vs CUDA-graph replay, in process: what each model costs the GPU without Python's launch overhead.
    SSAMBA runs with its tuned launch shapes (the default), and with the loop and the serial launch shape set
    (two scans per mixer; a mixer's two directions in one conv and one scan launch), so that the three compare."""
    from ssamba.models import build_encoder
    from ssamba.models.config import preset

    say(f"## 5. Eager vs CUDA graph replay, batch {batch}, inference (ms; triton.testing.do_bench)")
    say("| tokens | model | eager ms | graph ms |")
    say("|---|---|---|---|")
    runs = [("ssamba", {}, None), ("ssamba", {}, TritonConfig()),
            ("ssamba", {}, TritonConfig(1, 512, 1, "serial", unroll=2)), ("ssast", {"attention": "sdpa"}, None)]
    for n in tokens:
        frames = n // 8 * 16
        for arch, extra, launch in runs:
            label = f"{arch}-{extra['attention']}" if extra else f"{arch} ({launch.spec() if launch else 'tuned'})"
            if elapsed() > budget:
                say(f"| {n} | {label} | skipped: time budget | |")
                continue
            triton_ops.set_config(launch)
            torch.manual_seed(0)
            enc = build_encoder(preset(arch, "tiny", input_tdim=frames, drop_path_rate=0.0, **extra)).cuda().eval()
            x = torch.randn(batch, frames, 128, device="cuda")
            with torch.inference_mode():
                eager = bench_ms(lambda: enc(x))
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        enc(x)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    enc(x)
                replay = bench_ms(graph.replay)
            say(f"| {n} | {label} | {eager:.2f} | {replay:.2f} |")
            del enc, graph
            torch.cuda.empty_cache()
    triton_ops.set_config(None)
    say("")


def profile_model(tokens: int = 22000, batch: int = 2) -> None:
    """Where SSAMBA-tiny's inference time goes at a long input (torch.profiler, CUDA kernel time)."""
    from torch.profiler import ProfilerActivity, profile

    from ssamba.models import build_encoder
    from ssamba.models.config import preset

    frames = tokens // 8 * 16
    enc = build_encoder(preset("ssamba", "tiny", input_tdim=frames, drop_path_rate=0.0)).cuda().eval()
    x = torch.randn(batch, frames, 128, device="cuda")
    with torch.inference_mode():
        enc(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            enc(x)
            torch.cuda.synchronize()
    say(f"## Profile: SSAMBA-tiny inference, batch {batch}, {tokens} tokens (CUDA time by op)")
    say("```")
    say(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    say("```")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="folder for the report and the benchmark's files")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new sections after this")
    parser.add_argument("--skip-model", action="store_true", help="scan only (sections 1-3)")
    parser.add_argument("--skip-sweep", action="store_true", help="use the default launch shape (no section 2)")
    parser.add_argument("--profile", action="store_true", help="top CUDA kernels of SSAMBA-tiny at 22k tokens")
    parser.add_argument("--configs", type=lambda text: [TritonConfig.parse(c) for c in text.split(";")],
                        help="launch shapes of the sweep, 'block_d,chunk,warps,algo[,stages[,unroll]];...' "
                             "(default: a built-in list)")
    parser.add_argument("--skip-table", action="store_true", help="no subprocess model table (section 4)")
    parser.add_argument("--graph-tokens", type=int, nargs="*", default=[4096, 22000],
                        help="token counts of the eager vs CUDA-graph section (none: skip it)")
    parser.add_argument("--profile-tokens", type=int, nargs="+", default=[22000],
                        help="token counts profiled with --profile")
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 22000, 75000],
                        help="token counts of the model table (default 1k .. 150k frames)")
    parser.add_argument("--tf32-tokens", type=int, nargs="*", default=[4096, 22000],
                        help="token counts of a second model table with TF32 matmuls in both models (none: skip)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; the CPU suite tests the kernels in Triton's interpreter", file=sys.stderr)
        return 2
    import triton

    props = torch.cuda.get_device_properties(0)
    say(f"# GPU check: {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB; "
        f"torch {torch.__version__}, triton {triton.__version__}, python {sys.version.split()[0]}")
    try:
        import mamba_ssm  # noqa: F401

        say("mamba_ssm: installed")
    except Exception as exc:
        say(f"mamba_ssm: not available ({type(exc).__name__})")
    say("")
    ok, best = False, TritonConfig()  # the sweep's fastest forward: the scan sections' launch shape
    try:
        ok = guarded(correctness) or False
        bandwidth = guarded(copy_bandwidth) or 3e12
        BANDWIDTH[0] = bandwidth
        best = best if args.skip_sweep else (guarded(sweep, args.budget_s * 0.35, args.configs) or best)
        guarded(scan_table, best, bandwidth, args.budget_s * 0.5)
        guarded(conv_table, args.budget_s * 0.55)
        guarded(pair_table, best, args.budget_s * 0.58)
        if not args.skip_model:
            guarded(tuned_table, args.budget_s * 0.63, args.tokens)
        if not (args.skip_model or args.skip_table):
            guarded(model_table, out, max(30.0, args.budget_s * 0.8 - elapsed()), args.tokens)
            if args.tf32_tokens:
                guarded(model_table, out, max(20.0, args.budget_s * 0.88 - elapsed()), args.tf32_tokens, "high")
        if not args.skip_model and args.graph_tokens:
            guarded(graph_table, args.budget_s, tuple(args.graph_tokens))
        if args.profile:
            for tokens in args.profile_tokens:
                guarded(profile_model, tokens)
    finally:
        say(f"total {elapsed():.0f} s")
        (out / "gpu_check.md").write_text("\n".join(LINES) + "\n")
    return 0 if ok else 1


def guarded(fn, *args):
    """Run one section; a failure is reported in the output and the next section still runs."""
    import traceback

    try:
        return fn(*args)
    except Exception:
        say(f"section {fn.__name__} FAILED:\n```\n{traceback.format_exc()[-3000:]}```")
        return None


if __name__ == "__main__":
    raise SystemExit(main())
