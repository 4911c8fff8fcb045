"""Two gloo processes under torchrun take the same steps as one process with the same global batch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import load_file

CONFIG = """
task: finetune
model: {{arch: ssamba, size: tiny, fstride: 16, tstride: 16, overrides: {{depth: 2, drop_path_rate: 0.0}}}}
data:
  train: {root}/train.json
  class_labels: {root}/labels.csv
  dataset:
    features: {{target_length: 64}}
finetune: {{loss: ce, metric: acc}}
optim: {{name: sgd, momentum: 0.0, lr: 0.05, scheduler: none, weight_decay: 0.0}}
train: {{epochs: 1, max_steps: 3, progress: false, log_every: 1, device: cpu}}
"""


def make_corpus(root: Path, n: int = 24, shuffled_labels: bool = False) -> None:
    """Tones of two pitches labelled by pitch, or (``shuffled_labels``) labelled at random, where every score
    depends on every detail of the embeddings."""
    entries = []
    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.arange(8000) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (300 if i % 2 else 1200) * t) + 0.05 * rng.standard_normal(8000)
        path = root / f"{i}.wav"
        sf.write(path, wav.astype(np.float32), 16000)
        low = rng.random() < 0.5 if shuffled_labels else i % 2
        entries.append({"wav": str(path), "labels": "low" if low else "high"})
    (root / "train.json").write_text(json.dumps({"data": entries}))
    (root / "labels.csv").write_text("index,mid,display_name\n0,high,high\n1,low,low\n")


def test_two_process_ddp_equals_single_process(tmp_path):
    make_corpus(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path))
    single = [sys.executable, "-m", "ssamba", "finetune", str(cfg), f"out_dir={tmp_path / 'single'}",
              "train.batch_size=8"]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ssamba",
           "finetune", str(cfg), f"out_dir={tmp_path / 'ddp'}", "train.batch_size=4"]
    for cmd in (single, ddp):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    # the run's progress is told once, by rank 0; the other rank would only say warnings, with its rank
    assert "[rank 0] INFO ssamba" in result.stderr and "[rank 1] INFO" not in result.stderr
    a = load_file(tmp_path / "single" / "final" / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-5, key
    # the runs really trained (3 steps) and only rank 0 wrote logs
    records = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]


def test_two_process_probe_equals_single_process(tmp_path):
    """A randomly initialised encoder (the probe's control) is the same on every rank, and the gathered embeddings
    come back in the split's order: the probe's table does not depend on the number of processes (two ranks once
    embedded with two different random encoders, and trained the heads on rows in rank order)."""
    make_corpus(tmp_path, shuffled_labels=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path).replace("task: finetune", "task: probe") + "probe: {epochs: 5}\n")
    common = ["probe", str(cfg), f"data.valid={tmp_path / 'train.json'}", "model.init=null"]
    single = [sys.executable, "-m", "ssamba", *common, f"out_dir={tmp_path / 'single'}", "train.batch_size=5"]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ssamba",
           *common, f"out_dir={tmp_path / 'ddp'}", "train.batch_size=5"]
    for cmd in (single, ddp):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = (json.loads((tmp_path / run / "probe_results.json").read_text())["layers"] for run in ("single", "ddp"))
    assert len(a) == len(b) == 2  # depth 2: the block pair and the output (final norm)
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if key != "layer":
                assert row_a[key] == pytest.approx(row_b[key], abs=1e-6), key
