"""``ssamba bench efficiency`` on a tiny configuration (two blocks, 64 tokens): every configuration in its own
process, CSV + Markdown with SSAMBA/SSAST ratios + PNG plots, memory-based skipping, and the series logic.  No
assertion depends on speed; the full ``--max-tokens 22000`` run is for the report, not CI."""
from __future__ import annotations

import csv
import re

import pytest
import torch

from ssamba.bench import efficiency
from ssamba.bench.efficiency import BenchSpec, Config, Row, estimate_bytes
from ssamba.bench.report import render_markdown
from ssamba.cli import main
from ssamba.models.scan import get_backend

ENV = {"device": "cpu", "torch": "x", "threads": 1, "repeats": 1, "warmup": 0, "depth": 2}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "efficiency", "--sizes", "tiny", "--tokens", "64", "--batches", "1", "--depth", "2",
            "--repeats", "1", "--warmup", "1", "--threads", "1", "--device", "cpu", "--matmul-precision", "high",
            "--out", str(out)]
    assert main(argv) == 0
    return out


def test_outputs_csv_markdown_and_plots(bench_run):
    rows = list(csv.DictReader((bench_run / "results.csv").open()))
    assert [(r["variant"], int(r["tokens"])) for r in rows] == [("ssamba", 64), ("ssast-sdpa", 64),
                                                                ("ssast-naive", 64)]
    assert all(r["status"] == "ok" and float(r["time_s"]) > 0 and float(r["memory_mb"]) > 0 for r in rows)
    assert all(0 < float(r["cpu_s"]) for r in rows)
    assert all(int(r["frames"]) == int(r["tokens"]) * 2 and r["threads"] == "1" for r in rows)
    assert all(r["matmul_precision"] == "high" for r in rows)  # as each run's own process reported it
    assert [r["attention"] for r in rows] == ["", "sdpa", "naive"]  # SSAMBA has none, never "sdpa"
    backend = get_backend(torch.empty(1, 1, 1)).name
    assert {r["scan_backend"] for r in rows if r["arch"] == "ssamba"} == {backend}
    md = (bench_run / "results.md").read_text()
    assert f"scan backend {backend}" in md and "## tiny, batch 1" in md and "## Paper targets (tiny)" in md
    assert "Measured at depth 2, not the paper's 24 blocks" in md
    by = {(r["variant"], r["tokens"]): r for r in rows}
    line = next(ln for ln in md.splitlines() if ln.startswith("| 64 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    expected_time_ratio = float(by["ssamba", "64"]["time_s"]) / float(by["ssast-naive", "64"]["time_s"])
    expected_mem_ratio = float(by["ssamba", "64"]["memory_mb"]) / float(by["ssast-naive", "64"]["memory_mb"])
    assert float(cells[7]) == pytest.approx(expected_time_ratio, abs=1e-3)
    assert float(cells[8]) == pytest.approx(expected_mem_ratio, abs=1e-3)
    for name in ("time_vs_tokens.png", "memory_vs_tokens.png"):
        data = (bench_run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_earlier_results_render_again_merged_and_on_cpu_time(bench_run, tmp_path):
    out = tmp_path / "merged"
    # no measurement flags here: the header must come from the rows (depth 2, 1 thread, 1 warm-up, median of 1)
    argv = ["bench", "efficiency", "--from-csv", str(bench_run / "results.csv"), "--out", str(out)]
    assert main(argv) == 0
    assert (out / "results.csv").read_text() == (bench_run / "results.csv").read_text()
    original, rendered = (bench_run / "results.md").read_text(), (out / "results.md").read_text()
    table = [ln for ln in original.splitlines() if ln.startswith("| 64 |")]
    assert table and table == [ln for ln in rendered.splitlines() if ln.startswith("| 64")]
    header = f"device cpu, torch {torch.__version__}, threads 1, scan backend"
    assert header in original and header in rendered
    settings = "depth 2, float32 matmul precision high; 1 warm-up run(s), then the median of 1."
    assert settings in original and settings in rendered
    assert main(argv + ["--clock", "cpu"]) == 0
    md = (out / "results.md").read_text()
    assert "Time: process CPU time" in md
    by = {r["variant"]: r for r in csv.DictReader((bench_run / "results.csv").open())}
    cells = [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("| 64 |")).strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(float(by["ssamba"]["cpu_s"]), abs=1e-3)
    assert float(cells[7]) == pytest.approx(float(by["ssamba"]["cpu_s"]) / float(by["ssast-naive"]["cpu_s"]), abs=1e-3)


def test_configurations_over_the_memory_limit_are_skipped_and_said_so(tmp_path):
    spec = BenchSpec(sizes=["tiny"], batches=[2], tokens=[22000], variants=["ssast-naive"], memory_limit_gb=8)
    result = efficiency.run_benchmark(spec, tmp_path)
    [row] = result.rows
    assert row.status == "skipped" and re.fullmatch(r"estimated 2\d\.\d GB > 8\.0 GB available", row.note)
    assert "SSAST naive tiny, batch 2, 22000 tokens: skipped" in result.markdown


def test_memory_estimates_follow_the_attention_matrices():
    naive = estimate_bytes(Config("ssast-naive", "tiny", 1, 22000))
    sdpa = estimate_bytes(Config("ssast-sdpa", "tiny", 1, 22000))
    ssamba = estimate_bytes(Config("ssamba", "tiny", 1, 22000))
    scores = 2 * 3 * 22002 ** 2 * 4  # two (heads, N, N) float32 matrices alive at once
    assert naive - sdpa == scores and scores / 2**30 == pytest.approx(10.8, abs=0.1)
    assert ssamba < 2 * 2**30 and sdpa < 2**30
    assert estimate_bytes(Config("ssast-naive", "tiny", 2, 22000)) > 2 * scores


def test_a_failed_configuration_skips_the_larger_ones_of_its_series(tmp_path, monkeypatch):
    def fake_run(config, spec):
        status = "failed" if config.tokens == 64 else "ok"
        return Row(config.variant, config.arch, config.attention, config.size, config.batch, config.tokens,
                   config.frames, status, time_s=1.0, memory_mb=10.0, note="boom" if status == "failed" else "")

    monkeypatch.setattr(efficiency, "run_config", fake_run)
    spec = BenchSpec(sizes=["tiny"], batches=[1], tokens=[32, 64, 128], variants=["ssamba"])
    rows = efficiency.run_benchmark(spec, tmp_path).rows
    assert [(r.tokens, r.status) for r in rows] == [(32, "ok"), (64, "failed"), (128, "skipped")]
    assert rows[2].note == "a smaller configuration failed"


def test_the_time_budget_stops_new_configurations_and_keeps_lengths_complete(tmp_path, monkeypatch):
    clock = [0.0]
    ran = []

    def fake_run(config, spec):
        ran.append((config.tokens, config.variant))
        clock[0] += 10.0  # every configuration takes 10 s
        return Row(config.variant, config.arch, config.attention, config.size, config.batch, config.tokens,
                   config.frames, "ok", time_s=1.0, memory_mb=10.0)

    monkeypatch.setattr(efficiency, "run_config", fake_run)
    monkeypatch.setattr(efficiency.time, "monotonic", lambda: clock[0])
    spec = BenchSpec(sizes=["tiny"], batches=[1], tokens=[32, 64, 128], time_budget_s=25)
    rows = efficiency.run_benchmark(spec, tmp_path).rows
    # all variants of 32 tokens run first (30 s > 25 s), then nothing new starts
    assert ran == [(32, "ssamba"), (32, "ssast-sdpa"), (32, "ssast-naive")]
    assert [(r.tokens, r.status) for r in rows[3:]] == [(64, "skipped")] * 3 + [(128, "skipped")] * 3
    assert {r.note for r in rows[3:]} == {"time budget (25 s)"}


def test_default_token_sweep_and_target_verdicts():
    assert BenchSpec(max_tokens=22000).token_counts() == [512, 1024, 2048, 4096, 8192, 16384, 22000]
    rows = [Row("ssamba", "ssamba", "", "tiny", 1, 2048, 4096, "ok", time_s=0.5, memory_mb=4.0),
            Row("ssast-sdpa", "ssast", "sdpa", "tiny", 1, 2048, 4096, "ok", time_s=1.0, memory_mb=50.0),
            Row("ssast-naive", "ssast", "naive", "tiny", 1, 2048, 4096, "ok", time_s=10.0, memory_mb=100.0)]
    md = render_markdown(rows, ENV)
    assert "time SSAMBA/SSAST(naive) 0.050 (target <= 0.073: met), memory 0.040 (target <= 0.046: met)" in md
    assert "faster than SSAST(sdpa) from 2048 tokens on: met; time ratios 2048: 0.50" in md
    rows[0].time_s = 2.0
    md = render_markdown(rows, ENV)
    assert "0.200 (target <= 0.073: not met)" in md and "not met (slower at 2048 tokens)" in md
    assert "at this length they only indicate" in md  # 2048 tokens, the claims are at 22000
    for row in rows:
        row.tokens, row.status = 22000, "ok"
    md = render_markdown(rows, ENV)
    assert "22000 tokens: time SSAMBA/SSAST(naive)" in md and "only indicate" not in md
    assert "time ratios 22000: 2.00 (judged on these lengths only: 2048 tokens was not measured)" in md


def test_bench_options_are_checked_before_anything_runs(tmp_path, caplog):
    with pytest.raises(ValueError, match="clock must be wall or cpu, got 'cpu_time'"):
        BenchSpec(clock="cpu_time")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, got 'gpu'"):
        BenchSpec(device="gpu")
    with pytest.raises(ValueError, match="matmul_precision must be one of highest, high, medium, got 'tf32'"):
        BenchSpec(matmul_precision="tf32")
    for options, message in [
        ({"repeats": 0}, "repeats 0: counts must be >= 1"), ({"batches": [2, 0]}, "batches 0"),
        ({"tokens": [0]}, "tokens 0"), ({"max_tokens": -5}, "max_tokens -5"), ({"warmup": -1}, "warmup -1"),
        ({"threads": 0}, "threads 0"), ({"timeout_s": 0}, "timeout_s 0"), ({"memory_limit_gb": -1}, "memory_limit_gb"),
        ({"depth": 3}, "SSAMBA runs its blocks in forward/backward pairs: depth must be even, got 3"),
        ({"sizes": ["huge"]}, "sizes must be among tiny, small, base"), ({"variants": ["ssast"]}, "variants must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            BenchSpec(**options)
    assert BenchSpec(depth=3, variants=["ssast-sdpa"]).depth == 3  # odd depths are SSAST's to run
    assert main(["bench", "efficiency", "--repeats", "0", "--out", str(tmp_path / "r0")]) == 2
    assert "repeats 0" in caplog.text and not (tmp_path / "r0").exists()
    if not torch.cuda.is_available():  # once an AssertionError traceback from torch.cuda.mem_get_info
        assert main(["bench", "efficiency", "--device", "cuda", "--out", str(tmp_path / "b"), "--tokens", "32"]) == 2
        assert "this torch has no CUDA device" in caplog.text and not (tmp_path / "b").exists()
