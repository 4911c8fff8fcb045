"""``ssamba demo``: the whole library end to end on the built-in synthetic corpus, in minutes on a CPU.

generate the corpus -> pretrain a tiny SSAMBA (joint objective) -> fine-tune it and, as a control, the same model
from random initialisation with the same budget -> evaluate both on the test split -> a short efficiency comparison
against SSAST -> a results table (``report.md``) and plots (training curves, confusion matrix, time/memory vs tokens)
in the output folder.  The numbers are whatever this run measures; nothing is tuned for show.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssamba.audio.stats import dataset_stats
from ssamba.config import from_dict
from ssamba.data.manifest import read_manifest
from ssamba.data.synthetic import make_corpus
from ssamba.loading import load
from ssamba.train.build import class_labels, make_dataset
from ssamba.train.config import RunConfig
from ssamba.train.distributed import DistEnv
from ssamba.train.engine import eval_loader
from ssamba.train.logger import format_table
from ssamba.train.run import run
from ssamba.train.tasks import predict

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DemoBudget:
    clips_per_class: int
    unlabeled: int
    depth: int
    pretrain_steps: int
    finetune_epochs: int
    bench_tokens: tuple[int, ...]


QUICK = DemoBudget(clips_per_class=30, unlabeled=240, depth=4, pretrain_steps=40, finetune_epochs=8,
                   bench_tokens=(512, 1024))
# Sized for < 10 min on 2 CPU cores: measured 14.3 min with 600 steps / 20 epochs / 8192 tokens (4.0 min
# pretraining, 4.3 min per fine-tuning, 2.8 min benchmark), hence the halved budget.
FULL = DemoBudget(clips_per_class=80, unlabeled=1200, depth=8, pretrain_steps=300, finetune_epochs=10,
                  bench_tokens=(512, 2048, 4096))
FRAMES = 100  # 1-s clips
#: the runs the demo writes below its output folder
RUN_FOLDERS = ("pretrain", "finetune_pretrained", "finetune_scratch", "efficiency")
#: marks a folder as a demo's, whose RUN_FOLDERS a new demo may delete
DEMO_MARKER = ".ssamba-demo"


def _run_config(out: Path, task: str, budget: DemoBudget, corpus: Path, stats, **extra: Any) -> RunConfig:
    data: dict[str, Any] = {"dataset": {"features": {"target_length": FRAMES, "mean": stats[0], "std": stats[1]},
                                        "feature_cache": str(corpus.parent / "feature_cache")}}
    if task == "pretrain":
        data.update(train=str(corpus / "unlabeled.json"), valid=str(corpus / "unlabeled_valid.json"))
    else:
        data.update(train=str(corpus / "train.json"), valid=str(corpus / "validation.json"),
                    test=str(corpus / "test.json"), class_labels=str(corpus / "class_labels_indices.csv"))
    cfg = {
        "task": task, "out_dir": str(out),
        "model": {"arch": "ssamba", "size": "tiny", **extra.get("model", {}),
                  # the depth of a model built here; a fine-tune from the pretrained one keeps that one's
                  "overrides": {} if extra.get("model", {}).get("init") else {"depth": budget.depth}},
        "data": data,
        "optim": {"name": "adamw" if task == "pretrain" else "adam", "lr": 1e-3 if task == "pretrain" else 3e-4,
                  "scheduler": "none", "weight_decay": 5e-8 if task == "pretrain" else 5e-7},
        "train": {"batch_size": 16, "progress": False, "log_every": 10, "device": "cpu",
                  **({"epochs": 1000, "max_steps": budget.pretrain_steps, "eval_every": budget.pretrain_steps // 2}
                     if task == "pretrain" else {"epochs": budget.finetune_epochs})},
        "pretrain": {"mask_size": 16, "eval_mask_size": 16},
    }
    return from_dict(RunConfig, cfg)


def run_demo(out: str | Path, quick: bool = False, bench: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns the results that ``report.md`` shows."""
    budget, out = (QUICK if quick else FULL), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = [out / name for name in RUN_FOLDERS if (out / name).is_dir()]
    if earlier and not (out / DEMO_MARKER).is_file():  # never delete what another tool (or the user) wrote
        raise FileExistsError(f"{out}: holds {', '.join(p.name for p in earlier)}, not written by `ssamba demo` (no "
                              f"{DEMO_MARKER}); choose another --out")
    (out / DEMO_MARKER).write_text("written by `ssamba demo`: a new demo here replaces its run folders\n")
    for path in earlier:  # the demo's own runs: a second demo replaces them (training refuses to mix runs)
        logger.info("replacing the previous demo's %s", path)
        shutil.rmtree(path)
    started = time.perf_counter()
    torch.manual_seed(0)

    corpus = out / "corpus"
    make_corpus(corpus, clips_per_class=budget.clips_per_class, unlabeled=budget.unlabeled, seed=0)
    paths = [e.path for e in read_manifest(corpus / "unlabeled.json")]
    stats = dataset_stats(paths, FRAMES)
    stats = (float(stats.mean), float(stats.std))
    logger.info("corpus ready; normalisation mean %.3f std %.3f", *stats)

    run(_run_config(out / "pretrain", "pretrain", budget, corpus, stats))
    results: dict[str, Any] = {}
    for name, init in (("pretrained", str(out / "pretrain" / "final")), ("scratch", None)):
        cfg = _run_config(out / f"finetune_{name}", "finetune", budget, corpus, stats, model={"init": init})
        results[name] = run(cfg)
    labels = class_labels(cfg)
    confusion = _confusion(out / "finetune_pretrained" / "best", cfg)

    efficiency = None
    if bench:
        from ssamba.bench.efficiency import BenchSpec, run_benchmark

        spec = BenchSpec(sizes=["tiny"], batches=[1], tokens=list(budget.bench_tokens), repeats=2, warmup=1)
        efficiency = run_benchmark(spec, out / "efficiency").markdown

    rows = [{"model": f"SSAMBA-tiny (depth {budget.depth}), {name}",
             "valid acc": r["best_valid"]["acc"], "test acc": r["test"]["acc"], "test mAP": r["test"]["mAP"]}
            for name, r in results.items()]
    chance = 1 / len(labels)
    summary = {"chance": chance, "rows": rows, "seconds": time.perf_counter() - started,
               "classes": list(labels.names)}
    plots = _plots(out, labels.names, confusion)
    report = ["# ssamba demo", "", f"{len(labels)} synthetic classes (chance {chance:.3f}); "
              f"{budget.clips_per_class} clips per class, {budget.unlabeled} unlabeled clips; "
              f"{budget.pretrain_steps} pretraining steps, {budget.finetune_epochs} fine-tuning epochs.", "",
              format_table(rows), ""]
    if efficiency:
        report += ["## Efficiency (this machine)", "", efficiency, ""]
    report += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    report += ["", f"Total time: {summary['seconds']:.0f} s"]
    (out / "report.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _confusion(model_dir: Path, cfg: RunConfig) -> np.ndarray:
    labels = class_labels(cfg)
    model = load(model_dir)
    loader = eval_loader(make_dataset(cfg.data.test, labels, cfg, train=False), DistEnv(), cfg.train)
    logits, targets = predict(model, loader)
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for truth, guess in zip(targets.argmax(1), logits.argmax(1)):
        matrix[truth, guess] += 1
    return matrix


def _curve(run_dir: Path, split: str, key: str) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == split and key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def _plots(out: Path, names, confusion: np.ndarray) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(*_curve(out / "pretrain", "train", "loss"), label="train")
    axes[0].plot(*_curve(out / "pretrain", "valid", "loss"), "o-", label="valid")
    axes[0].set(title="pretraining joint loss (nce + 10 mse)", xlabel="step")
    axes[0].legend()
    for name in ("pretrained", "scratch"):
        axes[1].plot(*_curve(out / f"finetune_{name}", "valid", "acc"), "o-", label=name)
    axes[1].set(title="fine-tuning: validation accuracy", xlabel="step", ylim=(0, 1))
    axes[1].legend()
    fig.tight_layout()
    curves = out / "training_curves.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true",
           title="confusion matrix (pretrained, test)")
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    for (i, j), v in np.ndenumerate(confusion):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    matrix = out / "confusion_matrix.png"
    fig.savefig(matrix, dpi=100)
    plt.close(fig)
    efficiency = sorted((out / "efficiency").glob("*.png")) if (out / "efficiency").is_dir() else []
    for plot in efficiency:  # the benchmark writes its own plots; link them from the report folder
        target = out / plot.name
        target.write_bytes(plot.read_bytes())
    return [curves, matrix] + [out / p.name for p in efficiency]
