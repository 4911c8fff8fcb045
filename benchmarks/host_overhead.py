"""Host time of an SSAMBA inference forward on the "triton" path, without a GPU: what a GPU waits on at short clips.

Why.  On an H200 at 4k tokens SSAMBA-tiny took 33 ms eager and 21 ms replayed as a CUDA graph
(docs/bench/tiny-h200-triton-2/gpu_check.md): a third of the eager time was the host issuing ~1,600 PyTorch ops
and ~110 Triton launches one by one.  This runs the same Python (mixers, scan and conv wrappers, the fused trunk) on
tiny CPU tensors with every Triton launch replaced by a no-op, so that what is timed is the host's work per
forward: the wrappers' Python and the PyTorch ops' dispatch (the ops compute next to nothing at this size).  A CUDA
launch adds a few microseconds per op on top, and Triton's own launch path its share per kernel: neither is here.

    PYTHONPATH=src python benchmarks/host_overhead.py [--dim 16] [--frames 16] [--depth 24]

Prints the CPU time per forward (the minimum over repeats, process time; on a shared VM it still varies by tens of
percent between runs, so compare alternating runs), and per forward the top-level PyTorch ops, the Python and C
function calls (counted, so exact) and the kernel launches.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors take the Triton path (whose launches are stubbed below)

import argparse  # noqa: E402
import collections  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from ssamba.models import build_encoder  # noqa: E402
from ssamba.models.config import preset  # noqa: E402
from ssamba.models.scan import triton_conv, triton_norms, triton_ops, triton_pair  # noqa: E402


class _NoLaunch:
    """Stands for a jitted kernel: ``kernel[grid](*args)`` counts the launch and runs nothing."""

    def __init__(self, name: str, counts: collections.Counter) -> None:
        self.name, self.counts = name, counts

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            self.counts[self.name] += 1
        return launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=16, help="embedding width (small: the ops then compute ~nothing)")
    parser.add_argument("--frames", type=int, default=16, help="input frames (16: 8 patches + cls)")
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--forwards", type=int, default=20, help="forwards per repeat")
    args = parser.parse_args()
    if not triton_ops.available():
        raise SystemExit("Triton is not installed (pip install 'ssamba[gpu]')")
    torch.set_num_threads(1)
    launches: collections.Counter = collections.Counter()
    triton_ops._kernel = lambda name, algo: _NoLaunch(f"scan {name}", launches)
    triton_conv._kernel = lambda pair=False: _NoLaunch("conv + SiLU" + " pair" * pair, launches)
    triton_pair._kernel = lambda: _NoLaunch("scan pair", launches)
    triton_norms._kernel = lambda: _NoLaunch("add + norms", launches)
    encoder = build_encoder(preset("ssamba", "tiny", input_tdim=args.frames, embed_dim=args.dim, depth=args.depth,
                                   scan_backend="triton")).eval()
    x = torch.randn(2, args.frames, 128)
    with torch.no_grad():
        for _ in range(3):
            encoder(x)
        launches.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            encoder(x)
        per_forward = dict(launches)
        calls = collections.Counter()
        sys.setprofile(lambda frame, event, arg: calls.update((event,)))  # deterministic, unlike the timings
        encoder(x)
        sys.setprofile(None)
        times = []
        for _ in range(args.repeats):
            start = time.process_time()
            for _ in range(args.forwards):
                encoder(x)
            times.append((time.process_time() - start) / args.forwards)
    ops = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    print(f"SSAMBA depth {args.depth}, width {args.dim}, batch 2, {args.frames} frames, torch {torch.__version__}: "
          f"{min(times) * 1e3:.2f} ms host time per forward (min of {args.repeats} x {args.forwards}), "
          f"{len(ops)} top-level PyTorch ops, {calls['call']} Python and {calls['c_call']} C function calls, "
          f"launches {per_forward}")
    for name, count in collections.Counter(e.name for e in ops).most_common(12):
        print(f"  {name}: {count}")


if __name__ == "__main__":
    main()
