"""Linear probing and layer-wise evaluation: the standard test of self-supervised representations.

The encoder is frozen; every layer's tokens are mean-pooled into one embedding per clip (cls excluded), the
embeddings are standardised with the training set's statistics, and a linear classifier is trained per layer
(minibatch AdamW for a fixed number of epochs).  Cheap enough for a CPU.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssamba.atomic import atomic_write_text
from ssamba.models.heads import pool_mean
from ssamba.train.build import build_model, class_labels, make_dataset
from ssamba.train.config import ProbeSection, RunConfig
from ssamba.train.distributed import DistEnv, gather_objects
from ssamba.train.engine import TrainingError, eval_loader, first_best, seeded_cpu_rng
from ssamba.train.logger import format_table
from ssamba.train.metrics import classification_stats
from ssamba.train.sampler import unshuffled_positions
from ssamba.train.tasks import as_targets

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_embeddings(encoder: torch.nn.Module, loader, num_classes: int, env: DistEnv,
                       layers: str = "all") -> tuple[list[np.ndarray], np.ndarray]:
    """Mean-pooled embeddings (N, D) per layer (or only the final output) and float targets (N, C)."""
    encoder.eval()
    per_layer: list[list[np.ndarray]] = []
    targets = []
    for x, target in loader:
        x = x.to(env.device)
        states = encoder.hidden_states(x) if layers == "all" else [encoder(x)]
        pooled = [pool_mean(s, encoder.num_cls_tokens).float().cpu().numpy() for s in states]
        if not per_layer:
            per_layer = [[] for _ in pooled]
        for store, p in zip(per_layer, pooled):
            store.append(p)
        targets.append(as_targets(target, num_classes).numpy())
    mine = ([np.concatenate(s) for s in per_layer], np.concatenate(targets)) if targets else None
    gathered = gather_objects(mine, env)
    # rank r embedded clips r, r + world, r + 2 world, ... (eval_loader): back in the split's order, so that the
    # probe (trained on shuffled minibatches) does not depend on the number of processes
    ranks = [(r, p) for r, p in enumerate(gathered) if p is not None]  # a rank may hold no item (a tiny split)
    if not ranks:
        raise TrainingError("no clips to embed: the split is empty")
    order = np.argsort([i for r, p in ranks for i in unshuffled_positions(r, len(gathered), 0, len(p[1]))])
    embeddings = [np.concatenate([p[0][i] for _, p in ranks])[order] for i in range(len(ranks[0][1][0]))]
    return embeddings, np.concatenate([p[1] for _, p in ranks])[order]


def fit_linear(train_x: np.ndarray, train_y: np.ndarray, cfg: ProbeSection, loss: str,
               seed: int = 0) -> tuple[torch.nn.Linear, np.ndarray, np.ndarray]:
    """A linear classifier on standardised features; returns it with the standardisation (mean, std)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy((train_x - mean) / std).float()
    y = torch.from_numpy(train_y).float()
    g = torch.Generator().manual_seed(seed)
    with seeded_cpu_rng(seed):  # the head's initial weights from the seed too, not the global state
        head = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=g).split(cfg.batch_size):
            logits = head(x[idx])
            value = F.cross_entropy(logits, y[idx].argmax(1)) if loss == "ce" else \
                F.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
    return head, mean, std


@torch.no_grad()
def probe_scores(head: torch.nn.Linear, mean: np.ndarray, std: np.ndarray, x: np.ndarray) -> np.ndarray:
    return head(torch.from_numpy((x - mean) / std).float()).numpy()


def run_probe(cfg: RunConfig, env: DistEnv) -> dict[str, Any]:
    """Probe every layer: a linear classifier trained on ``data.train`` per layer, scored on ``data.valid`` and
    ``data.test``. The best layer is chosen on the validation split and reported with its test score; with a test
    split alone it is chosen on test, which the results (``selected_on``) and a warning mark as optimistic."""
    if cfg.data.train is None or (cfg.data.valid is None and cfg.data.test is None):
        raise TrainingError("probing needs data.train and data.valid or data.test")
    labels = class_labels(cfg)
    # init=None probes a randomly initialised encoder (a control): the same one on every rank (they are seeded
    # seed + rank, and nothing broadcasts a probe's weights)
    with seeded_cpu_rng(cfg.train.seed):
        model = build_model(cfg, labels).to(env.device)
    splits = {name: manifest for name, manifest in
              (("train", cfg.data.train), ("valid", cfg.data.valid), ("test", cfg.data.test)) if manifest}
    feats = {}
    for name, manifest in splits.items():
        loader = eval_loader(make_dataset(manifest, labels, cfg, train=False), env, cfg.train)
        feats[name] = extract_embeddings(model.encoder, loader, len(labels), env, cfg.probe.layers)
    held_out = [name for name in ("valid", "test") if name in feats]
    rows = []
    for layer, train_x in enumerate(feats["train"][0]):
        head, mean, std = fit_linear(train_x, feats["train"][1], cfg.probe, cfg.finetune.loss, cfg.train.seed)
        row: dict[str, Any] = {"layer": "output" if layer == len(feats["train"][0]) - 1 else f"layer {layer + 1}"}
        for name in held_out:
            x, y = feats[name][0][layer], feats[name][1]
            row.update({f"{name} {k}": v for k, v in classification_stats(probe_scores(head, mean, std, x), y)
                        .as_dict().items()})
        rows.append(row)
    selected_on = held_out[0]
    if selected_on == "test":
        logger.warning("probe: no data.valid, so the best layer is chosen on the test split (an optimistic score)")
    best = rows[first_best([r[f"{selected_on} {cfg.finetune.metric}"] for r in rows])]
    results = {"init": cfg.model.init, "manifests": splits, "metric": cfg.finetune.metric, "layers": rows,
               "best_layer": best["layer"], "selected_on": selected_on, "best": best}
    if env.is_main:
        atomic_write_text(Path(cfg.out_dir) / "probe_results.json", json.dumps(results, indent=2) + "\n")
        logger.info("linear probe (%s):\n%s\nbest layer on %s %s: %s", cfg.model.init or "random init",
                    format_table(rows), selected_on, cfg.finetune.metric, best["layer"])
    return results
