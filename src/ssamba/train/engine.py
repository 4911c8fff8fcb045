"""The training loop shared by pretraining and fine-tuning (and by SSAMBA and SSAST).

A ``Task`` says what one step computes and how to evaluate; the ``Trainer`` does the rest: DDP, gradient
accumulation, AMP, clipping, the lr schedule, periodic atomic checkpoints with exact resume, best-model selection on
the validation metric, logs and progress bars.  A non-finite loss stops the run with a clear message and leaves the
last good checkpoint in place.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ssamba.config import ConfigError
from ssamba.models.scan.reference import flush_denormals
from ssamba.train import state as ckpt
from ssamba.train.config import TrainConfig
from ssamba.train.distributed import DistEnv, all_reduce_mean
from ssamba.train.logger import RunLogger
from ssamba.train.optim import LRSchedule, OptimConfig, build_optimizer
from ssamba.train.sampler import ResumableSampler

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


def improves(value: float, best: float | None) -> bool:
    """Whether a validation metric (higher is better) beats the best so far: a NaN never does, and anything finite
    beats a NaN (a first validation of NaN once kept ``best/`` on it for the whole run)."""
    if math.isnan(value):
        return False
    return best is None or math.isnan(best) or value > best


def first_best(values: list[float]) -> int:
    """Index of the best value (higher is better) by :func:`improves`: the first of equal bests, never a NaN
    while anything is finite."""
    best = 0
    for i in range(1, len(values)):
        if improves(values[i], values[best]):
            best = i
    return best


def check_amp(amp: Literal["none", "bf16", "fp16"], device: torch.device) -> None:
    """fp16 needs CUDA: on CPU there is no GradScaler and the fused CPU kernels take float32/bf16 only, so the run
    would train unscaled and then fail at its first validation."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device, and this run is on {device.type}; "
                          "use train.amp=bf16 (or none) on CPU")


class Task(Protocol):
    main_metric: str  # validation metric to maximise (best model, plateau schedule)

    def train_step(self, model: nn.Module, batch: Any) -> dict[str, Tensor]: ...

    def evaluate(self, model: nn.Module, loader: DataLoader, env: DistEnv) -> dict[str, float]: ...


def move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    def __init__(self, model: nn.Module, task: Task, train_cfg: TrainConfig, optim_cfg: OptimConfig,
                 out_dir: str | Path, env: DistEnv, collate_fn=None,
                 objective: dict[str, Any] | None = None) -> None:
        """``objective``: the settings that define the loss and the validation metric (task, loss, metric,
        validation data, precision...), part of a checkpoint's setup: a best metric saved under one objective is
        no yardstick for another."""
        check_amp(train_cfg.amp, env.device)
        self.model, self.task, self.cfg, self.optim_cfg = model.to(env.device), task, train_cfg, optim_cfg
        self.out_dir, self.env, self.collate_fn, self.objective = Path(out_dir), env, collate_fn, objective
        self.train_data: dict[str, Any] | None = None  # set by fit (train_data_of); part of a checkpoint's setup
        self.resumed_setup: dict[str, Any] | None = None
        self.resumed_from: Path | None = None
        self.ddp = DistributedDataParallel(self.model, device_ids=[env.device.index] if env.device.type == "cuda"
                                           else None) if env.distributed else self.model
        self.optimizer = build_optimizer(self.model, optim_cfg)
        self.schedule = LRSchedule(self.optimizer, optim_cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=train_cfg.amp == "fp16" and env.device.type == "cuda")
        self.step, self.epoch, self.consumed = 0, 0, 0  # consumed: samples of this epoch seen by this rank
        self.best: dict[str, Any] = {"metric": None, "step": None}
        self.history: list[dict[str, Any]] = []
        self.log = RunLogger(self.out_dir, enabled=env.is_main)

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        from ssamba.train.distributed import gather_objects

        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "consumed": self.consumed, "best": self.best,
                "history": self.history, "rng": gather_objects(ckpt.rng_state(), self.env),
                "setup": self.setup()}

    def setup(self, train_data: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a checkpoint's step, epoch and optimiser state mean: the model, the optimiser settings (its saved
        state carries lr, betas and weight decay), the batch geometry and the training set's size. A resume with
        any of them changed would continue silently with the old values or on shifted data, so it is refused;
        the run length (epochs, max_steps) may change.  So is a changed ``objective``: the best validation metric
        the checkpoint carries would be compared with another metric, on other data or another loss."""
        config = getattr(self.model, "config", None)
        return {"model": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
                "optim": dataclasses.asdict(self.optim_cfg), "batch_size": self.cfg.batch_size,
                "seed": self.cfg.seed, "balanced": self.cfg.balanced,
                "train_data": self.train_data if train_data is None else train_data,
                "objective": self.objective}

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # collective (gathers RNG states): every rank takes part
        if self.env.is_main:
            path = ckpt.save_training_state(self.out_dir / "checkpoints", state)
            logger.debug("checkpoint at step %d -> %s", self.step, path)

    def resume(self, path: str | Path, train_set: Dataset | None = None) -> None:
        """Continue from a training checkpoint; with ``train_set`` the setup check (``setup``) covers the training
        data now rather than when ``fit`` starts."""
        state = ckpt.load_training_state(path)
        self.resumed_setup, self.resumed_from = state.get("setup"), Path(path)  # checked here and in fit
        self._check_setup(train_data_of(train_set) if train_set is not None else None)
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as exc:
            raise TrainingError(f"{path}: does not fit this run's model: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.consumed = state["step"], state["epoch"], state["consumed"]
        self.best, self.history = state["best"], state["history"]
        if len(state["rng"]) != self.env.world_size:
            raise TrainingError(f"{path}: saved with {len(state['rng'])} processes, resuming with "
                                f"{self.env.world_size}: exact resume needs the same world size")
        ckpt.set_rng_state(state["rng"][self.env.rank])
        self.log.truncate(self.step)  # the steps after the checkpoint are trained (and logged) again
        logger.info("resumed from %s at step %d (epoch %d, %d samples into it)", path, self.step, self.epoch + 1,
                    self.consumed)

    # ----------------------------------------------------------------------------------------------- loops
    def _loader(self, dataset: Dataset, sampler: ResumableSampler, batch_size: int, drop_last: bool) -> DataLoader:
        # The loader draws its workers' base seed from ``generator``: seeding it per epoch (not from the global
        # RNG) keeps the global stream identical whether an epoch starts fresh or resumes half-way.
        generator = torch.Generator().manual_seed(self.cfg.seed * 100003 + sampler.epoch * 1009 + self.env.rank)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.cfg.num_workers,
                          collate_fn=self.collate_fn, drop_last=drop_last, generator=generator,
                          pin_memory=self.env.device.type == "cuda", persistent_workers=False)

    def _autocast(self):
        return autocast(self.cfg, self.env.device)

    def fit(self, train_set: Dataset, valid_set: Dataset | None = None) -> dict[str, Any]:
        # Denormal floats (decayed scan states, their gradients) are 10-20x slower on x86 and change nothing.
        with flush_denormals():
            return self._fit(train_set, valid_set)

    def _check_setup(self, train_data: dict[str, Any] | None) -> None:
        """Refuse a resume whose setup differs from its checkpoint's (see ``setup``); checkpoints written before the
        setup was stored are not checked. The training data (``train_data_of``) is compared once it is known."""
        saved = self.resumed_setup
        if saved is None:
            return
        now = self.setup(train_data)
        keys = [k for k in now if k in saved and (k != "train_data" or train_data is not None)]
        changed = []
        for key in keys:
            if isinstance(now[key], dict) and isinstance(saved[key], dict):
                changed += [f"{key}.{k}: {saved[key].get(k)!r} -> {v!r}" for k, v in now[key].items()
                            if saved[key].get(k) != v]
            elif now[key] != saved[key]:
                changed.append(f"{key}: {saved[key]!r} -> {now[key]!r}")
        if changed:
            raise TrainingError(f"{self.resumed_from}: this checkpoint was written with another setup; --resume "
                                f"continues a run only with the same one ({'; '.join(changed)}). Start a new run "
                                "in another out_dir, or give the checkpoint's settings (config.yaml of the run)")

    def _fit(self, train_set: Dataset, valid_set: Dataset | None) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        self.train_data = train_data_of(train_set)
        self._check_setup(self.train_data)
        weights = class_balance(train_set) if cfg.balanced else None
        sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=env.rank,
                                   world_size=env.world_size, weights=weights)
        per_epoch = len(sampler.indices()) // cfg.batch_size // self.optim_cfg.accum_steps
        if per_epoch == 0:
            raise TrainingError(f"{len(train_set)} training samples give no full batch of {cfg.batch_size} "
                                f"x {self.optim_cfg.accum_steps} accumulation steps x {env.world_size} processes")
        total = per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, per_epoch * cfg.epochs)
        if self.optim_cfg.warmup_steps >= total and env.is_main:
            logger.warning("optim.warmup_steps=%d >= the run's %d steps: the learning rate never reaches optim.lr "
                           "(and is 0 for the first %d steps); set optim.warmup_steps=0 for a short run",
                           self.optim_cfg.warmup_steps, total, self.optim_cfg.warmup_interval)
        bar = tqdm(total=total, initial=self.step, disable=not (cfg.progress and env.is_main), unit="step",
                   dynamic_ncols=True, desc="train")
        try:
            while self.epoch < cfg.epochs and self.step < total:
                sampler.set_epoch(self.epoch, start=self.consumed)
                if hasattr(train_set, "set_epoch"):  # per-epoch augmentation seeds (AudioDataset)
                    train_set.set_epoch(self.epoch)
                loader = self._loader(train_set, sampler, cfg.batch_size, drop_last=True)
                epoch_end = (self.epoch + 1) * per_epoch
                finished = self._train_epoch(loader, valid_set, bar, total, epoch_end)
                if not finished and self.step < epoch_end:  # stopped mid-epoch by max_steps
                    break
                self.epoch, self.consumed = self.epoch + 1, 0
                metric = self._validate(valid_set) if valid_set is not None and cfg.eval_every is None else None
                self.schedule.end_epoch(metric)
                if self.epoch < cfg.epochs and self.step < total:  # else the final checkpoint below follows
                    self.save_checkpoint()
        finally:
            bar.close()
        if valid_set is not None and (not self.history or self.history[-1]["step"] != self.step):
            self._validate(valid_set)
        self.save_checkpoint()
        self._save_model("final")
        self.log.close()
        return {"step": self.step, "epoch": self.epoch, "best": self.best, "history": self.history}

    def _train_epoch(self, loader: DataLoader, valid_set: Dataset | None, bar, total: int, epoch_end: int) -> bool:
        """One (possibly resumed) epoch; False if it stopped on reaching ``total`` steps, which may also be the
        epoch's last step (the caller tells the two apart, so a finished last epoch still counts as finished).

        A checkpoint is always the last thing done at its step: the epoch's last step (``epoch_end``) and the run's
        last (``total``) are checkpointed by the caller, after their validation. So a resumed run drops exactly the
        log records after the checkpoint's step (``RunLogger.truncate``) and logs the same records again."""
        cfg, accum = self.cfg, self.optim_cfg.accum_steps
        self.ddp.train()
        self.optimizer.zero_grad(set_to_none=True)  # drop a partial accumulation left by the previous epoch
        micro, window, started = 0, [], time.perf_counter()
        for batch in loader:
            batch = move(batch, self.env.device)
            last_micro = micro == accum - 1
            sync = contextlib.nullcontext() if last_micro or not self.env.distributed else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    out = self.task.train_step(self.ddp, batch)
                self.scaler.scale(out["loss"] / accum).backward()
            window.append({k: v.detach().float() for k, v in out.items()})
            self.consumed += self.cfg.batch_size
            micro += 1
            if not last_micro:
                continue
            micro = 0
            stats = {k: all_reduce_mean(torch.stack([w[k] for w in window]).mean(), self.env).item()
                     for k in window[0]}
            window = []
            if not math.isfinite(stats["loss"]):  # checked before the update: the model in memory stays finite
                raise TrainingError(self._nonfinite_message(stats["loss"]))
            self._optimizer_step()
            elapsed = time.perf_counter() - started
            if self.step % cfg.log_every == 0 or self.step == total:
                rate = cfg.batch_size * accum * self.env.world_size * cfg.log_every / max(elapsed, 1e-9)
                self.log.log("train", self.step, {**stats, "lr": self.optimizer.param_groups[0]["lr"],
                                                  "samples_per_s": rate})
                started = time.perf_counter()
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()})
            if cfg.eval_every and valid_set is not None and self.step % cfg.eval_every == 0:
                self.schedule.observe(self._validate(valid_set))  # not an epoch: no epoch milestone moves
                self.ddp.train()
            if self.step % cfg.checkpoint_every == 0 and self.step < min(epoch_end, total):
                self.save_checkpoint()
            if cfg.halt_after_steps is not None and self.step >= cfg.halt_after_steps:
                raise SystemExit(f"halt_after_steps={cfg.halt_after_steps} reached (simulated interruption)")
            if self.step >= total:
                return False
        return True

    def _nonfinite_message(self, loss: float) -> str:
        """Names the checkpoint to go back to only if one was written (a run can diverge before its first)."""
        last = self.out_dir / "checkpoints" / ckpt.LAST
        where = (f"The last good checkpoint is {last}" if last.is_file()
                 else f"No checkpoint was written yet ({last} does not exist)")
        return (f"non-finite loss ({loss}) at step {self.step + 1}; stopping. {where} "
                "(lower the lr, enable grad_clip, check the data)")

    def _optimizer_step(self) -> None:
        self.schedule.apply(self.step)
        if self.optim_cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _validate(self, valid_set: Dataset) -> float:
        metrics = self.evaluate(valid_set)
        value = metrics[self.task.main_metric]
        record = {"step": self.step, "epoch": self.epoch, **metrics}
        self.history.append(record)
        self.log.log("valid", self.step, metrics)
        if improves(value, self.best["metric"]):
            self.best = {"metric": value, "step": self.step, **metrics}
            self._save_model("best")
        logger.info("step %d: valid %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return value

    def evaluate(self, dataset: Dataset) -> dict[str, float]:
        return evaluate(self.model, dataset, self.task, self.env, self.cfg, self.collate_fn)

    def _save_model(self, name: str) -> None:
        if self.env.is_main and hasattr(self.model, "save_pretrained"):
            self.model.save_pretrained(self.out_dir / name)


def train_data_of(dataset: Dataset) -> dict[str, Any]:
    """What identifies a training set for a resume: its size, a digest of its clips and labels where the dataset
    lists them (``AudioDataset.entries``: the same size from other files would shift every epoch's order too), and
    its features and augmentation (``AudioDataset.config``)."""
    entries = getattr(dataset, "entries", None)
    digest = None if entries is None else hashlib.sha1(
        "\n".join(f"{e.path}\t{','.join(e.labels)}" for e in entries).encode()).hexdigest()[:16]
    config = getattr(dataset, "config", None)  # features, normalisation, augmentation (AudioDataset)
    pipeline = ({k: v for k, v in dataclasses.asdict(config).items() if k != "bad_files_log"}
                if dataclasses.is_dataclass(config) else None)
    return {"samples": len(dataset), "digest": digest, "pipeline": pipeline}


def class_balance(dataset: Dataset) -> list[float]:
    """Per-clip sampling weights, 1 / (clips of its class), for ``train.balanced``."""
    weights = getattr(dataset, "class_balance_weights", None)
    if weights is None:
        raise TrainingError(f"train.balanced needs a dataset of labelled clips, not a {type(dataset).__name__}")
    try:
        return weights()
    except ValueError as exc:
        raise TrainingError(f"train.balanced: {exc}") from exc


def eval_loader(dataset: Dataset, env: DistEnv, cfg: TrainConfig, collate_fn=None) -> DataLoader:
    """Every sample exactly once across ranks (rank r takes r, r + world, ...), in order."""
    sampler = ResumableSampler(len(dataset), shuffle=False, rank=env.rank, world_size=env.world_size, pad=False)
    return DataLoader(dataset, batch_size=cfg.eval_batch_size or cfg.batch_size, sampler=sampler,
                      num_workers=cfg.num_workers, collate_fn=collate_fn, pin_memory=env.device.type == "cuda")


@contextlib.contextmanager
def seeded_cpu_rng(seed: int):
    """The CPU generator seeded with ``seed`` inside, restored after. Only the CPU one: ``torch.manual_seed`` would
    also re-seed the CUDA generators, which ``fork_rng(devices=[])`` does not restore (after each validation every
    rank would then draw the same drop-path masks)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def evaluate(model: nn.Module, dataset: Dataset, task: Task, env: DistEnv, cfg: TrainConfig,
             collate_fn=None) -> dict[str, float]:
    """Evaluate ``model`` on ``dataset`` in eval mode, with a fixed seed and without touching the training RNG."""
    loader = eval_loader(dataset, env, cfg, collate_fn)
    was_training = model.training
    model.eval()
    try:
        with seeded_cpu_rng(cfg.seed), torch.no_grad(), autocast(cfg, env.device):
            return task.evaluate(model, loader, env)
    finally:
        model.train(was_training)
