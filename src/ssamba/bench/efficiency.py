"""``ssamba bench efficiency``: inference time and peak memory of SSAMBA vs SSAST (``sdpa`` and ``naive``
attention) over token counts, as the paper's efficiency figures.

Every configuration runs in a fresh subprocess (``python -m ssamba.bench.efficiency --worker JSON``) so that one
configuration's allocations cannot lower or raise another's peak.  CPU memory is the peak RSS minus the RSS just
before the model is built (weights + input + activations); on CUDA it is ``torch.cuda.max_memory_allocated``, as
the paper measured.  Each configuration runs ``warmup`` untimed forward passes, then ``repeats`` timed ones; the
median is reported, both elapsed (wall) and process CPU time; ``clock="cpu"`` shows the latter, which other load
on a shared machine barely changes when the run uses one thread.  A configuration whose estimated memory exceeds
what is available is skipped (and said so), as is every larger configuration of a series whose smaller one failed
or timed out.  Inputs are 128 mel bins and
16x16 patches with stride 16, so ``tokens = 8 * frames / 16``.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ssamba.bench.memory import available_bytes, current_rss_bytes, peak_rss_bytes

logger = logging.getLogger(__name__)

#: variant -> (architecture, attention); SSAMBA has no attention ("" in the CSV's attention column)
VARIANTS = {"ssamba": ("ssamba", ""), "ssast-sdpa": ("ssast", "sdpa"), "ssast-naive": ("ssast", "naive")}
FREQ_ROWS = 8  # 128 mel bins / 16
PATCH = 16
#: fraction of the available memory a configuration may be estimated to use
SAFETY = 0.85


MATMUL_PRECISIONS = ("highest", "high", "medium")


@dataclass
class BenchSpec:
    sizes: list[str] = field(default_factory=lambda: ["tiny"])
    batches: list[int] = field(default_factory=lambda: [1, 2])
    max_tokens: int = 22000
    tokens: list[int] | None = None  # explicit token counts; default: 512, 1024, ... < max_tokens, max_tokens
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    depth: int | None = None
    clock: Literal["wall", "cpu"] = "wall"  # which time the tables and plots show: elapsed, or process CPU time
    timeout_s: float = 3600.0
    memory_limit_gb: float | None = None
    time_budget_s: float | None = None  # no new configuration starts after this; the rest are reported as skipped
    # torch.set_float32_matmul_precision in every run, both models alike: "high" lets CUDA matmuls use TF32
    matmul_precision: Literal["highest", "high", "medium"] = "highest"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, "
                             f"got {self.matmul_precision!r}")
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be wall or cpu, got {self.clock!r}")
        # the rest too, before any worker starts (a worker takes a minute; --repeats 0 once failed in every one)
        from ssamba.models.config import EMBED_DIMS

        for name, values, known in (("sizes", self.sizes, EMBED_DIMS), ("variants", self.variants, VARIANTS)):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ValueError(f"{name} must be among {', '.join(known)}, got {values!r}")
        counts = {"batches": min(self.batches, default=0), "repeats": self.repeats, "max_tokens": self.max_tokens,
                  **({"tokens": min(self.tokens, default=0)} if self.tokens is not None else {}),
                  **({"threads": self.threads} if self.threads is not None else {}),
                  **({"depth": self.depth} if self.depth is not None else {})}
        small = [f"{k} {v}" for k, v in counts.items() if v < 1] + ([f"warmup {self.warmup}"] if self.warmup < 0
                                                                    else [])
        limits = {"timeout_s": self.timeout_s, "memory_limit_gb": self.memory_limit_gb,
                  "time_budget_s": self.time_budget_s}
        small += [f"{k} {v}" for k, v in limits.items() if v is not None and not v > 0]
        if small:
            raise ValueError(f"{', '.join(small)}: counts must be >= 1 (warmup >= 0), limits positive")
        if self.depth is not None and "ssamba" in self.variants:
            from ssamba.models.config import preset

            preset("ssamba", "tiny", depth=self.depth)  # the architecture's own rules (an even depth)

    def token_counts(self) -> list[int]:
        counts = self.tokens or _doubling(512, self.max_tokens)
        return sorted({_round_tokens(t) for t in counts})

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


@dataclass
class Config:
    variant: str
    size: str
    batch: int
    tokens: int
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    device: str = "cpu"
    depth: int | None = None
    matmul_precision: str = "highest"

    @property
    def arch(self) -> str:
        return VARIANTS[self.variant][0]

    @property
    def attention(self) -> str:
        return VARIANTS[self.variant][1]

    @property
    def frames(self) -> int:
        return self.tokens // FREQ_ROWS * PATCH

    def encoder_config(self):
        from ssamba.models.config import preset

        overrides = {"input_tdim": self.frames, "drop_path_rate": 0.0}
        if self.arch == "ssast":
            overrides["attention"] = self.attention
        if self.depth is not None:
            overrides["depth"] = self.depth
        return preset(self.arch, self.size, **overrides)


def _doubling(start: int, stop: int) -> list[int]:
    out, t = [], start
    while t < stop:
        out.append(t)
        t *= 2
    return out + [stop]


def _round_tokens(tokens: int) -> int:
    """Token counts are whole time columns of 8 patches."""
    return max(FREQ_ROWS, int(round(tokens / FREQ_ROWS)) * FREQ_ROWS)


def parameter_count(config: Config) -> int:
    """Parameters of the encoder, counted on the meta device (nothing allocated)."""
    from ssamba.models import build_encoder

    with torch.device("meta"):
        encoder = build_encoder(config.encoder_config())
    return sum(p.numel() for p in encoder.parameters())


def estimate_bytes(config: Config) -> int:
    """A deliberately generous estimate of the peak memory of one configuration.

    Weights, plus per-token activations (measured on CPU: SSAMBA peaks at ~56 floats per token and channel -- the
    mixer's in_proj, flipped copies, conv, delta, gate and scan outputs of both directions alive at once -- and a
    ViT block at ~15; estimated as 72 and 36), plus for naive attention two full ``heads x N x N`` float32 matrices alive at
    once (the scores and their softmax).
    """
    enc = config.encoder_config()
    n = config.tokens + enc.num_cls_tokens
    activations = config.batch * n * enc.embed_dim * 4 * (72 if config.arch == "ssamba" else 36)
    attention = 2 * config.batch * enc.num_heads * n * n * 4 if config.attention == "naive" and \
        config.arch == "ssast" else 0
    fixed = 64 * 2**20  # allocator, thread pools and library buffers that any run touches
    return fixed + parameter_count(config) * 4 + config.batch * config.frames * 128 * 4 + activations + attention


# -- the worker: one configuration, in its own process ----------------------------------------------------------

def measure(config: Config) -> dict:
    """Build the encoder, run warm-up and timed forward passes, return the measurements."""
    from ssamba.models import build_encoder
    from ssamba.models.scan import get_backend

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_float32_matmul_precision(config.matmul_precision)
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_bytes()
    torch.manual_seed(0)
    encoder = build_encoder(config.encoder_config()).eval().to(device)
    x = torch.randn(config.batch, config.frames, 128, device=device)
    times, cpu = [], []
    with torch.inference_mode():
        for k in range(config.warmup + config.repeats):
            if cuda:
                torch.cuda.synchronize(device)
                if k == config.warmup and k:  # the peak of the measured runs: not the warm-up's one-time buffers
                    torch.cuda.reset_peak_memory_stats(device)  # (the Triton backend's launch-shape tuning)
            start, cpu_start = time.perf_counter(), time.process_time()
            encoder(x)
            if cuda:
                torch.cuda.synchronize(device)
            if k >= config.warmup:
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - cpu_start)
    memory = torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes() - rss_before
    backend = get_backend(torch.empty(1, 1, 1, device=device)).name if config.arch == "ssamba" else ""
    if backend == "triton":
        from ssamba.models.scan import triton_ops

        backend = f"triton ({triton_ops.launch_shapes_used()})"
    return {"time_s": statistics.median(times), "time_min_s": min(times), "time_max_s": max(times),
            "cpu_s": statistics.median(cpu),
            "memory_mb": memory / 2**20, "scan_backend": backend, "threads": torch.get_num_threads(),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "parameters": sum(p.numel() for p in encoder.parameters())}


def _worker(payload: str) -> int:
    result = measure(Config(**json.loads(payload)))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- the driver ------------------------------------------------------------------------------------------------

@dataclass
class Row:
    variant: str
    arch: str
    attention: str
    size: str
    batch: int
    tokens: int
    frames: int
    status: str  # ok, skipped, failed, timeout
    time_s: float | None = None
    time_min_s: float | None = None
    time_max_s: float | None = None
    cpu_s: float | None = None  # process CPU time (all threads): robust to other load on a shared CPU
    memory_mb: float | None = None
    estimated_mb: float | None = None
    scan_backend: str = ""
    device: str = ""
    threads: int | None = None
    matmul_precision: str = ""  # as the run reported it ("": not measured, or a CSV from before it was recorded)
    note: str = ""
    # how the row was measured, so that a report rendered later (--from-csv) describes the rows, not its own flags
    depth: int | None = None  # None: the size preset's depth
    repeats: int | None = None
    warmup: int | None = None
    torch: str = ""


def _row(config: Config, status: str, **values) -> Row:
    """A row of ``config`` before (or instead of) its measurement."""
    return Row(config.variant, config.arch, config.attention, config.size, config.batch, config.tokens,
               config.frames, status, device=config.device, depth=config.depth, repeats=config.repeats,
               warmup=config.warmup, torch=torch.__version__, **values)


def plan(spec: BenchSpec) -> list[Config]:
    """Every configuration, smallest token count first with all variants of it together, so that a run cut short
    by ``time_budget_s`` still holds complete comparisons up to some length."""
    device = spec.resolved_device()
    return [Config(v, s, b, t, spec.repeats, spec.warmup, spec.threads, device, spec.depth, spec.matmul_precision)
            for s in spec.sizes for b in spec.batches for t in spec.token_counts() for v in spec.variants]


def run_config(config: Config, spec: BenchSpec) -> Row:
    """Run one configuration in a fresh subprocess, unless its estimate exceeds the memory available now."""
    row = _row(config, "ok")
    estimate = estimate_bytes(config)
    row.estimated_mb = estimate / 2**20
    limit = spec.memory_limit_gb * 2**30 if spec.memory_limit_gb else SAFETY * available_bytes(config.device)
    if estimate > limit:
        row.status = "skipped"
        row.note = f"estimated {estimate / 2**30:.1f} GB > {limit / 2**30:.1f} GB available"
        logger.warning("skip %s: %s", _label(config), row.note)
        return row
    logger.info("run %s (estimated %.2f GB)", _label(config), estimate / 2**30)
    cmd = [sys.executable, "-m", "ssamba.bench.efficiency", "--worker", json.dumps(asdict(config))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=spec.timeout_s)
    except subprocess.TimeoutExpired:
        row.status, row.note = "timeout", f"over {spec.timeout_s:.0f} s"
        return row
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        row.status = "failed"
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        row.note = ("killed (out of memory?)" if proc.returncode in (-9, 137) else tail[0])[:200]
        return row
    for key, value in json.loads(lines[-1][len("RESULT "):]).items():
        if hasattr(row, key):
            setattr(row, key, value)
    return row


def _label(c: Config) -> str:
    return f"{c.variant} {c.size} batch {c.batch} tokens {c.tokens}"


@dataclass
class BenchResult:
    rows: list[Row]
    markdown: str
    files: list[Path]


def environment(spec: BenchSpec) -> dict:
    return {"device": spec.resolved_device(), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": spec.threads or "torch default", "repeats": spec.repeats,
            "warmup": spec.warmup, "depth": spec.depth or "preset", "clock": spec.clock,
            "matmul_precision": spec.matmul_precision}


def environment_of_rows(rows: list[Row], clock: str) -> dict:
    """The report header of rows measured earlier: each setting as the rows recorded it ("mixed: ..." where they
    differ, "not recorded" for rows written before the setting was stored); ``clock`` picks the time shown."""
    def setting(name: str, unset: str) -> str:
        values = list(dict.fromkeys(getattr(r, name) for r in rows if r.status == "ok") or
                      dict.fromkeys(getattr(r, name) for r in rows))
        shown = [unset if v is None else "not recorded" if v == "" else str(v) for v in values]
        return shown[0] if len(shown) == 1 else "mixed: " + ", ".join(shown)

    return {"device": setting("device", "not recorded"), "torch": setting("torch", "not recorded"),
            "threads": setting("threads", "torch default"), "repeats": setting("repeats", "not recorded"),
            "warmup": setting("warmup", "not recorded"), "depth": setting("depth", "preset"), "clock": clock,
            "matmul_precision": setting("matmul_precision", "not recorded")}


def render_from_csv(paths: list[str | Path], spec: BenchSpec, out_dir: str | Path) -> BenchResult:
    """Write the outputs for rows measured earlier (merging several ``results.csv``), without running anything. The
    header describes the rows (their device, depth, repeats, ...), whatever this command's measurement flags say."""
    from ssamba.bench.report import read_rows, write_outputs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows([Path(p) for p in paths])
    markdown, files = write_outputs(rows, environment_of_rows(rows, spec.clock), out_dir)
    return BenchResult(rows, markdown, files)


def run_benchmark(spec: BenchSpec, out_dir: str | Path) -> BenchResult:
    """Run every configuration (smallest first per series), then write CSV, Markdown and plots to ``out_dir``."""
    from ssamba.bench.report import write_outputs

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch has no CUDA device (a CPU-only build, or no GPU visible)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    broken: set[tuple] = set()
    start = time.monotonic()
    for config in plan(spec):
        series = (config.variant, config.size, config.batch)
        if series in broken or (spec.time_budget_s is not None and time.monotonic() - start > spec.time_budget_s):
            note = "a smaller configuration failed" if series in broken else f"time budget ({spec.time_budget_s:g} s)"
            row = _row(config, "skipped", note=note)
        else:
            row = run_config(config, spec)
            if row.status in ("failed", "timeout"):
                broken.add(series)
        rows.append(row)
        logger.info("%s: %s %s", _label(config), row.status,
                    f"{row.time_s:.3f} s, {row.memory_mb:.0f} MB" if row.status == "ok" else row.note)
    markdown, files = write_outputs(rows, environment(spec), out_dir)
    return BenchResult(rows, markdown, files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="worker of ssamba bench efficiency (one configuration)")
    parser.add_argument("--worker", required=True, help="JSON of a Config")
    return _worker(parser.parse_args(argv).worker)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BenchSpec", "Config", "Row", "BenchResult", "estimate_bytes", "measure", "plan", "run_benchmark"]
