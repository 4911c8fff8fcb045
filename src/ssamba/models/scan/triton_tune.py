"""Launch shapes measured on the GPU at hand: the first call of a shape times the candidates, later calls reuse the
fastest.

Why.  Which of the Triton backend's launch shapes (``triton_ops.TritonConfig``) is fastest depends on the GPU, the
batch and the sequence length: the warps in flight per scheduler, which hide the latency of the scan's dependent
chains, are batch x channels x warps per program over the SMs.  A default guessed from instruction counts can be
wrong on the GPU a user has, so the backend measures instead, once per process and shape, as ``triton.autotune``
does for a kernel.  The candidates are timed as whole calls (a scan with its dt projection, or a mixer's two
directions), not kernels: the "serial" forward and the pair launch change what runs around the kernel (the dt_proj
matmul, the sum of the two directions, host work), which a kernel's autotune would not see.

This module only times and remembers: what a candidate is and how it runs is the caller's (``triton_ops.launch_config``
holds the policy: an explicit launch shape is never tuned).  A key holds the batch and length rounded up to powers
of two, so a stream of files of varied length tunes a few times, not once per file.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable, Hashable, NamedTuple, Sequence, TypeVar

import torch

log = logging.getLogger(__name__)

#: "0": never tune (the default launch shape); "1": tune wherever the Triton backend runs, also in Triton's
#: interpreter (for tests; timings there mean nothing); unset: tune on CUDA.
AUTOTUNE_VAR = "SSAMBA_TRITON_AUTOTUNE"

#: Wall time a timed round of one candidate aims at (several calls when one is shorter).
ROUND_S = 2e-3
ROUNDS = 3

C = TypeVar("C", bound=Hashable)


class Decision(NamedTuple):
    """What tuning a key chose, and the seconds per call it measured for every candidate (inf: it failed)."""

    choice: Hashable
    seconds: dict


_decisions: dict[Hashable, Decision] = {}


def enabled(device: torch.device) -> bool:
    """Whether calls on ``device`` are tuned (see ``AUTOTUNE_VAR``); never while a CUDA graph is being captured,
    as timing synchronises the device, which a capture forbids."""
    setting = os.environ.get(AUTOTUNE_VAR, "")
    if setting == "0" or (setting != "1" and device.type != "cuda"):
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def decisions() -> dict[Hashable, Decision]:
    """Every key tuned in this process and its decision (a copy), for reports such as ``benchmarks/gpu_check.py``."""
    return dict(_decisions)


def clear() -> None:
    """Forget every decision: the next call of each shape tunes again."""
    _decisions.clear()


def cached(key: Hashable) -> Hashable | None:
    """The choice made for ``key``, None when it has not been tuned."""
    decision = _decisions.get(key)
    return None if decision is None else decision.choice


def fastest(key: Hashable, candidates: Sequence[C], prepare: Callable[[], Callable[[C], object]],
            device: torch.device) -> C:
    """The candidate whose call is fastest for ``key``, timed on the first request and remembered.

    ``prepare()`` builds the inputs (once, on a miss) and returns ``run(candidate)``, one call.  A candidate whose
    call raises (a shape a GPU lacks the resources for) is logged and left out; the first candidate, the default,
    is taken when every one fails, or when the inputs do not fit in memory."""
    decision = _decisions.get(key)
    if decision is not None:
        return decision.choice
    try:
        run = prepare()
    except torch.OutOfMemoryError as exc:  # the inputs of a long sequence on a nearly full GPU
        log.warning("launch shape for %s: no memory to time the candidates (%s); using %s", key,
                    str(exc).splitlines()[0], candidates[0])
        _decisions[key] = Decision(candidates[0], {})
        return candidates[0]
    seconds: dict = {}
    with torch.autocast(device.type, enabled=False):  # the candidates run as the scan would: in float32
        for candidate in candidates:
            try:
                seconds[candidate] = timer(run, candidate, device)
            except Exception as exc:  # noqa: BLE001 - a failed candidate is reported and skipped, not fatal
                log.warning("launch shape %s fails for %s: %s: %s", candidate, key, type(exc).__name__, exc)
                seconds[candidate] = math.inf
    del run  # the inputs
    choice = min(candidates, key=lambda c: seconds[c])  # the first of equals: the default wins ties
    if math.isinf(seconds[choice]):
        choice = candidates[0]
    _decisions[key] = Decision(choice, seconds)
    log.info("launch shape for %s: %s (%s)", key, choice,
             ", ".join(f"{c}: {seconds[c] * 1e3:.3f} ms" for c in candidates))
    return choice


def timer(run: Callable[[C], object], candidate: C, device: torch.device) -> float:
    """Seconds per call of ``run(candidate)``: the best of ``ROUNDS`` rounds of ~``ROUND_S`` each, after a call that
    compiles its kernels.  CUDA events on a GPU (host time included where the host is the bottleneck, as it is in
    use); wall time elsewhere."""
    run(candidate)  # compiles (or loads from Triton's cache) and warms up
    once = _elapsed(run, candidate, device, 1)
    reps = max(1, min(25, int(ROUND_S / max(once, 1e-6))))
    return min(_elapsed(run, candidate, device, reps) for _ in range(ROUNDS))


def _elapsed(run: Callable[[C], object], candidate: C, device: torch.device, reps: int) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            run(candidate)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps
    began = time.perf_counter()
    for _ in range(reps):
        run(candidate)
    return (time.perf_counter() - began) / reps
