"""Wires a ``RunConfig`` to data, model and engine: pretraining, fine-tuning (single split or K folds),
evaluation, and linear probing."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import statistics
import zlib
from pathlib import Path
from typing import Any, Literal

from ssamba.atomic import atomic_write, atomic_write_text
from ssamba.config import save_config
from ssamba.data.dataset import read_bad_files
from ssamba.data.manifest import ClassLabels, hold_out, read_manifest, write_json_manifest
from ssamba.loading import load
from ssamba.models.classifier import AudioClassifier
from ssamba.train.build import BAD_FILES_LOG, build_model, check_classes, check_data_files, class_labels, \
    make_dataset, make_task, seed_everything
from ssamba.train.config import RunConfig, TrainConfig
from ssamba.train.distributed import DistEnv, barrier, cleanup, init_distributed
from ssamba.train.engine import Trainer, TrainingError, check_amp, evaluate, first_best
from ssamba.train.logger import format_table
from ssamba.train.probe import run_probe

logger = logging.getLogger(__name__)


def _write_json(path: Path, data: Any, env: DistEnv) -> None:
    if env.is_main:  # atomic: a K-fold --resume reads a fold's results.json as "this fold is done"
        atomic_write_text(path, json.dumps(data, indent=2, default=float) + "\n")


#: what a run writes into its folder; a new run (no --resume) refuses a folder holding any of these
RUN_OUTPUTS = ("checkpoints", "log.jsonl", "log.csv", "tensorboard", "best", "final", "results.json", BAD_FILES_LOG)


def check_fresh(out_dirs: list[Path]) -> None:
    """A new run never mixes with an old one: its logs would append to the old logs, and an old ``best/`` could
    stand in for the model this run trains. Continuing needs --resume; starting afresh, an empty folder."""
    for out_dir in out_dirs:
        found = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
        if found:
            raise TrainingError(f"{out_dir} already holds a previous run ({', '.join(found)}): pass --resume to "
                                "continue it, or choose a new out_dir (or delete this one) to start afresh")


def _save_run_config(cfg: RunConfig, out_dir: Path, env: DistEnv) -> None:
    """The run's resolved config.yaml, without the simulated interruption (``train.halt_after_steps``), so that
    `finetune RUN/config.yaml --resume` does not stop there again."""
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, halt_after_steps=None)),
                    out_dir / "config.yaml")


def _read_results(path: Path) -> dict[str, Any] | None:
    """A finished run's results, or None if it has none (or an unreadable one, which is said, and redone)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        logger.warning("%s: unreadable (%s); running that fold again", path, exc)
        return None


def _reached(results: dict[str, Any], train: TrainConfig) -> bool:
    """Whether a finished fold already ran as long as ``train`` asks: a --resume with ``train.epochs`` (or
    ``train.max_steps``) raised continues the folds that ended short of it from their last checkpoint."""
    return results["epochs"] >= train.epochs or (train.max_steps is not None and results["steps"] >= train.max_steps)


def fold_seed(seed: int, fold: str) -> int:
    """Each fold draws from its own seed (train.seed and the fold's name), so its model, and so its result, do not
    depend on which folds ran before it in this process or were skipped by --resume as done."""
    return seed + zlib.crc32(fold.encode())


def objective(cfg: RunConfig) -> dict[str, Any]:
    """What a run optimises and how it selects its best model, for the resume check (``Trainer.setup``)."""
    section = dataclasses.asdict(cfg.pretrain if cfg.task == "pretrain" else cfg.finetune)
    section.pop("cv_pass", None)  # which pass cross-validation reports: read from the folds' curves, may change
    valid = str(Path(cfg.data.valid).resolve()) if cfg.data.valid else None
    return {"task": cfg.task, **section, "valid": valid, "amp": cfg.train.amp}


def train_one(cfg: RunConfig, env: DistEnv, resume: bool, out_dir: Path) -> dict[str, Any]:
    """One training run (one split or one fold) into ``out_dir``; returns and writes ``results.json``.

    Test metrics are those of the model this run selected on the validation set (``best/``), or, without
    validation, of the model it ended with."""
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.train is None:
        raise TrainingError("data.train (a manifest) is required")
    labels = None if cfg.task == "pretrain" else class_labels(cfg)
    model = build_model(cfg, labels)
    task = make_task(cfg)
    train_set = make_dataset(cfg.data.train, labels, cfg, train=True)
    valid_set = make_dataset(cfg.data.valid, labels, cfg, train=False) if cfg.data.valid else None
    trainer = Trainer(model, task, cfg.train, cfg.optim, out_dir, env, objective=objective(cfg))
    checkpoint = out_dir / "checkpoints" / "last.pt"
    if resume and checkpoint.is_file():
        trainer.resume(checkpoint, train_set)
    elif resume:
        logger.warning("--resume: no checkpoint at %s; starting from the beginning", checkpoint)
        trainer.log.truncate(0)  # what a run killed before its first checkpoint logged is logged again
    _save_run_config(cfg, out_dir, env)  # after a resume was accepted (a refused one leaves the run's own)
    fit = trainer.fit(train_set, valid_set)
    results: dict[str, Any] = {"steps": fit["step"], "epochs": fit["epoch"], "best_valid": fit["best"],
                               "history": fit["history"]}
    if cfg.data.test and labels is not None:
        if fit["best"]["step"] is not None:  # this run selected a model on the validation set: test that one
            model.load_state_dict(type(model).from_pretrained(out_dir / "best").state_dict())
        results["test"] = evaluate(model, make_dataset(cfg.data.test, labels, cfg, train=False), task, env,
                                   cfg.train)
    bad = read_bad_files(out_dir / BAD_FILES_LOG)
    if bad:  # replaced by other clips during training: listed, never silently dropped
        results["bad_files"] = bad
        logger.warning("%d training file(s) could not be read and were replaced by other clips; see %s",
                       len(bad), out_dir / BAD_FILES_LOG)
    _write_json(out_dir / "results.json", results, env)
    if env.is_main:
        summary = {"run": str(out_dir), **{f"valid_{k}": v for k, v in (fit["best"] or {}).items()
                                            if isinstance(v, float)}}
        summary.update({f"test_{k}": v for k, v in results.get("test", {}).items()})
        logger.info("results:\n%s", format_table([summary]))
    return results


def run_kfold(cfg: RunConfig, env: DistEnv, resume: bool) -> dict[str, Any]:
    """Cross-validation: one run per fold, then the folds' mean and std, at one validation pass (``kfold_summary``)
    or, with dev splits (``data.fold_valid_ratio``), on each fold's test split (``dev_summary``)."""
    if cfg.data.fold_dir is None:
        raise TrainingError("data.folds needs data.fold_dir (the folder `ssamba prepare` wrote)")
    out, metric = Path(cfg.out_dir), make_task(cfg).main_metric
    # OUT/config.yaml, for `finetune OUT/config.yaml --resume`: written now by a new run, and by a resumed one at
    # the end, once every fold has accepted its settings
    if not resume:
        _save_run_config(cfg, out, env)
    per_fold: dict[str, Any] = {}
    for fold in cfg.data.folds:
        fold_out = out / fold
        done = _read_results(fold_out / "results.json") if resume else None
        if done is not None and _reached(done, cfg.train):
            per_fold[fold] = done
            logger.info("fold %s already done; skipping", fold)
            continue
        if done is not None:
            logger.info("fold %s ended at epoch %d (step %d), short of this run's length: continuing it", fold,
                        done["epochs"], done["steps"])
        seed_everything(fold_seed(cfg.train.seed, fold) + env.rank)
        fold_dir = Path(cfg.data.fold_dir)
        train, evaluation = fold_dir / f"{fold}_train.json", fold_dir / f"{fold}_eval.json"
        if cfg.data.fold_valid_ratio is None:
            splits = {"train": str(train), "valid": str(evaluation)}
        else:  # a dev split of the training clips selects; the fold's eval split is the test set
            splits = {**dev_split(train, cfg.data.fold_valid_ratio, fold, fold_out, env), "test": str(evaluation)}
        fold_cfg = dataclasses.replace(cfg, out_dir=str(fold_out), data=dataclasses.replace(cfg.data, folds=[],
                                                                                             **splits))
        per_fold[fold] = train_one(fold_cfg, env, resume, fold_out)
    if cfg.data.fold_valid_ratio is not None:
        summary = dev_summary(metric, per_fold)
    else:
        curves = {fold: [r[metric] for r in result["history"]] for fold, result in per_fold.items()}
        summary = kfold_summary(metric, curves, cfg.finetune.cv_pass)
    _write_json(out / "results.json", summary, env)
    _save_run_config(cfg, out, env)
    if env.is_main:
        logger.info("%s", describe_summary(summary))
    return summary


def describe_summary(summary: dict[str, Any]) -> str:
    """The cross-validation result as a line saying how it was chosen, and a table of the folds."""
    metric = summary["metric"]
    mean = f"{summary['mean']:.4f} ± {summary['std']:.4f}"
    if summary["rule"] == "dev":
        rows = [{"fold": f, f"test {metric}": v, f"dev {metric}": summary["dev"][f]}
                for f, v in summary["folds"].items()]
        rows.append({"fold": "mean ± std", f"test {metric}": mean, f"dev {metric}": ""})
        return ("cross-validation, each fold's test split scored with the model its dev split selected:\n"
                + format_table(rows))
    own = summary["fold_best"]
    rows = [{"fold": f, metric: v, f"own best {metric}": own["folds"][f]} for f, v in summary["folds"].items()]
    rows.append({"fold": "mean ± std", metric: mean, f"own best {metric}": f"{own['mean']:.4f} ± {own['std']:.4f}"})
    which = "the best of the fold-averaged curve" if summary["rule"] == "best_average" else "every fold's last"
    return (f"cross-validation at validation pass {summary['pass']}, {which} (own best: each fold's best pass, "
            f"chosen on the fold it scores: optimistic):\n{format_table(rows)}")


def dev_split(train: Path, ratio: float, fold: str, out_dir: Path, env: DistEnv) -> dict[str, str]:
    """The fold's training manifest cut into ``train`` and ``valid`` manifests in ``out_dir/dev_split`` (a seeded
    ``ratio`` held out, the same on every rank and every resume), written by rank 0."""
    kept, held = hold_out(read_manifest(train), ratio, zlib.crc32(fold.encode()))
    paths = {"train": out_dir / "dev_split" / "train.json", "valid": out_dir / "dev_split" / "valid.json"}
    if env.is_main:
        for key, entries in (("train", kept), ("valid", held)):
            atomic_write(paths[key], functools.partial(write_json_manifest, entries))
        logger.info("fold %s: %d training clips, %d held out as its dev split (%s)", fold, len(kept), len(held),
                    paths["valid"])
    barrier(env)
    return {key: str(path) for key, path in paths.items()}


def dev_summary(metric: str, per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Cross-validation with dev splits: every fold's test score of the model its dev split selected (s3prl)."""
    missing = [fold for fold, result in per_fold.items() if metric not in result.get("test", {})]
    if missing:
        raise TrainingError(f"fold(s) {', '.join(missing)} have no test {metric} (their results.json predates "
                            "data.fold_valid_ratio?): run them again")
    return {"metric": metric, "rule": "dev", **fold_stats({f: r["test"][metric] for f, r in per_fold.items()}),
            "dev": {fold: (result["best_valid"] or {}).get(metric) for fold, result in per_fold.items()}}


def fold_stats(scores: dict[str, float]) -> dict[str, Any]:
    """The folds' scores with their mean and (population) standard deviation."""
    values = list(scores.values())
    return {"folds": scores, "mean": statistics.fmean(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def kfold_summary(metric: str, curves: dict[str, list[float]],
                  rule: Literal["best_average", "last"] = "best_average") -> dict[str, Any]:
    """The cross-validation result at one validation pass (epoch) for every fold. ``rule="best_average"`` is how
    SSAST/AST report ESC-50 (their ``get_esc_result.py``): average the folds' validation curves and take the pass
    where that average is best. ``rule="last"`` takes every fold's last pass, as the official Urban8K scripts do
    (nothing is selected on the folds that are scored).  Each fold's own best pass is chosen on the very fold it
    scores, which SSAST calls over-optimistic; it is kept beside, as ``fold_best``, and so are the last pass
    (``final``) and the best-average pass (``best_average``).  Curves of unequal length are compared over their
    common passes."""
    passes = min(len(c) for c in curves.values())
    if passes == 0:
        raise TrainingError("cross-validation needs a validation pass in every fold (data.valid is the fold's eval)")
    if rule not in ("best_average", "last"):
        raise ValueError(f"rule must be 'best_average' or 'last', got {rule!r}")
    average = [statistics.fmean(c[i] for c in curves.values()) for i in range(passes)]
    best = first_best(average)
    chosen = best if rule == "best_average" else passes - 1

    def at(index: int) -> dict[str, Any]:
        return fold_stats({fold: curve[index] for fold, curve in curves.items()})

    return {"metric": metric, "rule": rule, "pass": chosen + 1, **at(chosen),
            "fold_best": fold_stats({f: c[first_best(c)] for f, c in curves.items()}),
            "final": at(passes - 1), "best_average": {"pass": best + 1, **at(best)}}


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Entry point of ``ssamba pretrain``/``finetune``/``probe`` (also under torchrun)."""
    env = init_distributed(cfg.train.device)
    seed_everything(cfg.train.seed + env.rank)
    try:
        if cfg.task != "probe":
            make_task(cfg)  # the settings' own consistency first, then the files they name
        check_data_files(cfg)
        if cfg.task == "probe":
            if resume:
                raise TrainingError("a probe has nothing to resume (it trains its linear heads in one go): run it "
                                    "again without --resume")
            return run_probe(cfg, env)
        check_amp(cfg.train.amp, env.device)
        if not resume:
            out = Path(cfg.out_dir)
            check_fresh([out, *(out / fold for fold in cfg.data.folds)])
        if cfg.data.folds:
            return run_kfold(cfg, env, resume)
        return train_one(cfg, env, resume, Path(cfg.out_dir))
    finally:
        cleanup(env)


def run_evaluate(cfg: RunConfig) -> dict[str, Any]:
    """Evaluate the fine-tuned ``model.init`` on ``data.test`` (or ``data.valid``)."""
    env = init_distributed(cfg.train.device)
    try:
        manifest = cfg.data.test or cfg.data.valid
        if cfg.model.init is None or manifest is None:
            raise TrainingError("evaluate needs model.init (a fine-tuned model) and data.test or data.valid")
        check_amp(cfg.train.amp, env.device)
        model = load(cfg.model.init)
        if not isinstance(model, AudioClassifier):
            raise TrainingError(f"{cfg.model.init}: not a classifier")
        if cfg.data.class_labels is None and model.config.labels is not None:
            # the model knows its classes (ours record them); the manifest's labels must be those names
            logger.info("classes: the %d names stored with %s (no data.class_labels given)",
                        len(model.config.labels), cfg.model.init)
            labels = ClassLabels.from_names(model.config.labels)
        else:
            labels = class_labels(cfg)
            check_classes(model, labels, cfg.model.init)
        if model.config.encoder.input_tdim != cfg.data.dataset.features.target_length:
            logger.info("evaluating at the model's input length %d frames", model.config.encoder.input_tdim)
            cfg.data.dataset = dataclasses.replace(cfg.data.dataset, features=dataclasses.replace(
                cfg.data.dataset.features, target_length=model.config.encoder.input_tdim))
        if not Path(manifest).is_file():  # by its key, as check_data_files says it (the other splits are unused)
            raise TrainingError(f"data.{'test' if cfg.data.test else 'valid'}: {manifest} not found")
        metrics = evaluate(model.to(env.device), make_dataset(manifest, labels, cfg, train=False), make_task(cfg),
                           env, cfg.train)
        _write_json(Path(cfg.out_dir) / "eval_results.json", {"model": str(cfg.model.init), "manifest": manifest,
                                                                **metrics}, env)
        if env.is_main:
            logger.info("evaluation of %s on %s:\n%s", cfg.model.init, manifest, format_table([metrics]))
        return metrics
    finally:
        cleanup(env)
