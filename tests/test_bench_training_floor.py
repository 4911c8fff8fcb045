"""The training-step floor of ``benchmarks/scan.py``: the matmuls it replays are exactly the ones a training step
runs (forward and backward, with their layouts and counts), and the scan count and shape are the step's.  No
assertion depends on speed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset
from ssamba.models.scan import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the CPU kernels could not be built here")


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scan.py"
    spec = importlib.util.spec_from_file_location("bench_scan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _linear_flops(model: torch.nn.Module, tokens: int, batch: int) -> float:
    """Forward FLOPs of every Linear, applied to ``tokens`` rows (the classification head: to ``batch`` rows)."""
    total = 0.0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            rows = batch if name.startswith("head") else tokens
            total += 2.0 * rows * mod.in_features * mod.out_features
    return total


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_replay_runs_the_step_s_matmuls_and_the_step_s_scans(bench, bf16):
    torch.manual_seed(0)
    depth, batch, frames = 2, 2, 128
    model = AudioClassifier(ModelConfig(encoder=preset("ssamba", "tiny", depth=depth, input_tdim=frames),
                                        task="classify", label_dim=5)).train()
    x = torch.randn(batch, frames, 128)
    with bench.StepRecorder() as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), torch.tensor([1, 3]))
        loss.backward()
    tokens = batch * (model.encoder.grid[0] * model.encoder.grid[1] + model.num_cls_tokens)
    # one scan per mixer, at (batch, patches + cls tokens, d_inner)
    assert rec.scans == [(batch, tokens // batch, 2 * 192)] * depth
    replay, flops = bench.matmul_replay(rec.matmuls)
    # every Linear's input requires grad (the patch embedding is a conv): forward + input grad + weight grad
    assert flops == pytest.approx(3 * _linear_flops(model, tokens, batch), rel=1e-12)
    with bench.StepRecorder() as again:
        replay()
    assert again.matmuls == rec.matmuls and again.scans == []
    dtypes = {a[2] for _, key, _ in rec.matmuls for a in key if isinstance(a, tuple)}
    assert dtypes == ({torch.bfloat16} if bf16 else {torch.float32})


def test_strided_operands_keep_the_recorded_layout(bench):
    t = bench._strided_randn((4, 5), (0, 1))  # an expanded gradient, as autograd hands a sum's backward
    assert t.stride() == (0, 1) and torch.equal(t[0], t[3])
    t = bench._strided_randn((3, 12), (44, 1))  # a column slice of a wider projection
    assert t.stride() == (44, 1) and t.shape == (3, 12)
