"""The training engine on small synthetic data: learning, exact resume, NaN handling, schedules, logs."""
from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from torch.utils.data import TensorDataset

from ssamba.models import mamba
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset
from ssamba.pretrain.model import MaskedPatchModel
from ssamba.train.distributed import DistEnv
from ssamba.train.config import TrainConfig
from ssamba.train.engine import Trainer, TrainingError
from ssamba.train.optim import LRSchedule, OptimConfig, build_optimizer
from ssamba.train.tasks import ClassificationTask, PretrainTask
from ssamba.train.tensorboard import masked_crc


def toy_classification(n=48, classes=3, frames=32, seed=0):
    """Class c is a ripple along mel with c + 1 periods per patch height, in noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.5 * torch.randn(n, frames, 128, generator=g)
    mel = torch.arange(128, dtype=torch.float32)
    for c in range(classes):
        x[y == c] += torch.cos(2 * torch.pi * (c + 1) * mel / 16)
    return TensorDataset(x, y)


def small_classifier(classes=3, seed=0):
    torch.manual_seed(seed)
    enc = preset("ssamba", "tiny", depth=2, input_tdim=32, drop_path_rate=0.0)
    return AudioClassifier(ModelConfig(encoder=enc, task="classify", label_dim=classes))


def make_trainer(tmp, model, task, **train_kw):
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2, "progress": False,
                         **train_kw})
    optim = OptimConfig(name="adam", lr=1e-3, scheduler="none", weight_decay=0.0)
    return Trainer(model, task, cfg, optim, tmp, DistEnv())


def test_finetuning_learns_and_writes_logs(tmp_path):
    data = toy_classification()
    trainer = make_trainer(tmp_path, small_classifier(), ClassificationTask(), epochs=4)
    result = trainer.fit(data, toy_classification(n=24, seed=1))
    assert result["step"] == 4 * 6 and result["epoch"] == 4
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4]  # the last epoch counts as finished too
    assert result["best"]["acc"] >= 0.9  # chance is 1/3
    assert (tmp_path / "best" / "model.safetensors").is_file() and (tmp_path / "final" / "config.json").is_file()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "valid"}
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("split,step")
    # the TensorBoard file is a valid TFRecord stream with every record's CRCs intact
    (event_file,) = (tmp_path / "tensorboard").iterdir()
    raw, pos, count = event_file.read_bytes(), 0, 0
    while pos < len(raw):
        (length,) = struct.unpack_from("<Q", raw, pos)
        assert struct.unpack_from("<I", raw, pos + 8)[0] == masked_crc(raw[pos:pos + 8])
        data_bytes = raw[pos + 12:pos + 12 + length]
        assert struct.unpack_from("<I", raw, pos + 12 + length)[0] == masked_crc(data_bytes)
        pos, count = pos + 16 + length, count + 1
    assert count == 1 + len(records) and b"train/loss" in raw and b"brain.Event:2" in raw


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path):
    data = toy_classification(n=40)
    task = ClassificationTask()
    full = make_trainer(tmp_path / "full", small_classifier(), task, epochs=2)
    full.fit(data)
    torch.manual_seed(123)  # the resumed run must not depend on the ambient RNG
    halted = make_trainer(tmp_path / "run", small_classifier(), task, epochs=2, halt_after_steps=7)
    with pytest.raises(SystemExit):
        halted.fit(data)  # killed after step 7; the last checkpoint is from step 6 (mid-epoch 2)
    torch.manual_seed(999)
    resumed = make_trainer(tmp_path / "run", small_classifier(seed=5), task, epochs=2)
    resumed.resume(tmp_path / "run" / "checkpoints")
    assert resumed.step == 6 and resumed.epoch == 1 and resumed.consumed == 8
    resumed.fit(data)
    assert resumed.step == full.step == 10
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_pretraining_resume_is_exact_with_random_masks_and_drop_path(tmp_path):
    data = TensorDataset(torch.randn(24, 32, 128))

    def model():
        torch.manual_seed(0)
        return MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny", depth=2, input_tdim=32,
                                                           drop_path_rate=0.3)))

    task = PretrainTask(mask_size=6, eval_mask_size=6)
    full = make_trainer(tmp_path / "full", model(), task, epochs=2)
    full.fit(data, data)
    halted = make_trainer(tmp_path / "run", model(), task, epochs=2, halt_after_steps=5)
    with pytest.raises(SystemExit):
        halted.fit(data, data)
    resumed = make_trainer(tmp_path / "run", model(), task, epochs=2)
    resumed.resume(tmp_path / "run" / "checkpoints")
    resumed.fit(data, data)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert full.history == resumed.history


def test_pretraining_validation_does_not_depend_on_processes_or_batch_size(monkeypatch):
    """Validation masks are drawn per clip (seed, clip index, objective): every rank once reseeded alike and drew
    masks per batch, so the validation accuracy of one model was 0.096 on 1 process and 0.142 on 2."""
    from ssamba.train import engine, tasks

    torch.manual_seed(0)
    model = MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny", depth=2, input_tdim=32))).eval()
    data = TensorDataset(torch.randn(7, 32, 128))
    task, cfg = PretrainTask(mask_size=6, eval_mask_size=6), TrainConfig(seed=3, batch_size=3)

    def run(rank: int, world: int, batch: int, gathered=None):
        if gathered is not None:
            monkeypatch.setattr(tasks, "gather_objects", lambda obj, env: [*gathered, obj])
        out = engine.evaluate(model, data, task, DistEnv(rank=rank, world_size=world),
                              TrainConfig(seed=3, batch_size=batch))
        monkeypatch.undo()
        return out

    one = run(0, 1, 3)
    for key, value in run(0, 1, 2).items():  # another batch size
        assert value == pytest.approx(one[key], rel=1e-5), key
    captured = []  # rank 0 of 2 (clips 0, 2, 4, 6), then rank 1 (clips 1, 3, 5) with rank 0's sums
    monkeypatch.setattr(tasks, "gather_objects", lambda obj, env: captured.append(obj) or [obj])
    engine.evaluate(model, data, task, DistEnv(rank=0, world_size=2), cfg)
    monkeypatch.undo()
    two = run(1, 2, 3, gathered=captured)
    for key, value in two.items():
        assert value == pytest.approx(one[key], rel=1e-5), key
    assert run(0, 1, 3) == one  # the fixed seed
    assert engine.evaluate(model, data, task, DistEnv(), TrainConfig(seed=4, batch_size=3)) != one


def test_balanced_training_draws_every_class_alike_and_is_part_of_the_setup(tmp_path):
    """train.balanced: a 10:1 training set is drawn about 1:1 (SUPERB's keyword-spotting sampler); a resume with
    the other sampling is refused, as with another batch or seed."""
    x, y = toy_classification(n=66, classes=2)[:]
    keep = torch.cat([torch.nonzero(y == 0).flatten()[:30], torch.nonzero(y == 1).flatten()[:3]])

    class Clips(TensorDataset):
        def class_balance_weights(self):
            counts = torch.bincount(self.tensors[1])
            return [1.0 / counts[c].item() for c in self.tensors[1]]

    class Seen(ClassificationTask):
        seen: list[int] = []

        def train_step(self, model, batch):
            self.seen.extend(batch[1].tolist())
            return super().train_step(model, batch)

    data = Clips(x[keep], y[keep])
    trainer = make_trainer(tmp_path, small_classifier(classes=2), Seen(), epochs=4, balanced=True)
    trainer.fit(data)
    counts = torch.bincount(torch.tensor(Seen.seen), minlength=2)
    assert counts.sum() == 4 * 32 and 0.3 < counts[1] / counts.sum() < 0.7, counts  # unbalanced: 3/33 = 0.09
    again = make_trainer(tmp_path, small_classifier(classes=2), Seen(), epochs=5)
    with pytest.raises(TrainingError, match="balanced: True -> False"):
        again.resume(tmp_path / "checkpoints")


class NanAfter(ClassificationTask):
    """A task whose loss turns NaN from its ``n``-th training step on (as a diverging run would)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def train_step(self, model, batch):
        out = super().train_step(model, batch)
        self.calls += 1
        if self.calls > self.n:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, small_classifier(), NanAfter(3), epochs=1)
    trainer.cfg.checkpoint_every = 1
    with pytest.raises(TrainingError, match="non-finite loss .* last good checkpoint"):
        trainer.fit(toy_classification(n=40))
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert saved["step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_warmup_and_multistep_follow_the_official_schedule():
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=1.0, warmup_steps=1000, scheduler="multistep", decay_start=5, decay_every=1,
                      decay_rate=0.5)
    sched = LRSchedule(build_optimizer(model, cfg), cfg)
    assert [sched.apply(s) for s in (0, 49, 50, 99, 100, 999, 1000, 5000)] == \
        [0.0, 0.0, 0.05, 0.05, 0.1, 0.95, 1.0, 1.0]
    lrs = []
    for epoch in range(1, 9):  # lr used during epoch 1..8
        lrs.append(sched.apply(2000))
        sched.end_epoch()
    assert lrs == [1.0] * 5 + [0.5, 0.25, 0.125]  # the first decay takes effect in epoch start + 1


def test_plateau_matches_torch_reduce_lr_on_plateau():
    metrics = [0.1, 0.2, 0.2, 0.19, 0.2, 0.25, 0.24, 0.23, 0.22, 0.21, 0.3]
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=1.0, scheduler="plateau", plateau_patience=2, plateau_factor=0.5)
    ours = LRSchedule(build_optimizer(model, cfg), cfg)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
    for m in metrics:
        ours.end_epoch(m)
        theirs.step(m)
        assert ours.apply(10) == pytest.approx(opt.param_groups[0]["lr"])


def test_head_gets_its_own_learning_rate():
    model = small_classifier()
    opt = build_optimizer(model, OptimConfig(lr=1e-4, head_lr_mult=3.0))
    assert [g["lr"] for g in opt.param_groups] == [1e-4, pytest.approx(3e-4)]
    head_ids = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == head_ids


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_optimizer_makes_the_reference_update(name):
    """build_optimizer uses torch's fused Adam/AdamW kernel on CPU; its steps equal the for-loop implementation's."""
    torch.manual_seed(0)
    a, b = small_classifier(), small_classifier()
    b.load_state_dict(a.state_dict())
    before = {k: v.clone() for k, v in a.state_dict().items()}
    cfg = OptimConfig(name=name, lr=1e-3, weight_decay=0.05)
    ours = build_optimizer(a, cfg)
    assert all(g["fused"] for g in ours.param_groups)
    ref_cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    ref = ref_cls(b.parameters(), lr=1e-3, betas=cfg.betas, weight_decay=0.05, foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        ours.step()
        ref.step()
    for (na, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7, msg=na)
        assert not torch.equal(pa, before[na]), f"{na} did not move"


def test_gradient_accumulation_equals_large_batch(tmp_path):
    data = toy_classification(n=32)
    task = ClassificationTask()
    runs = {}
    for name, batch, accum in [("big", 16, 1), ("acc", 8, 2)]:
        trainer = make_trainer(tmp_path / name, small_classifier(), task, epochs=1, batch_size=batch)
        trainer.optim_cfg.accum_steps, trainer.optim_cfg.momentum = accum, 0.0
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)  # linear in the gradient
        for group in trainer.optimizer.param_groups:
            group["base_lr"] = 0.1
        trainer.schedule.optimizer = trainer.optimizer
        trainer.fit(data)
        runs[name] = trainer
    assert runs["big"].step == runs["acc"].step == 2
    for a, b in zip(runs["big"].model.parameters(), runs["acc"].model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)



def test_bf16_autocast_on_cpu_trains_in_bfloat16(tmp_path):
    """``train.amp=bf16`` on CPU (with this machine's default scan backend): activations are bf16 while the
    weights stay float32, the loss is finite and falls, and every parameter learns."""
    torch.manual_seed(0)
    model = small_classifier()
    x = toy_classification(n=8, seed=2).tensors[0]
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    err = ((half.double() - full.double()).norm() / full.double().norm()).item()
    assert half.dtype == torch.bfloat16 and 0 < err < 3e-2, err  # bf16 rounding (eps 2^-8), not float32's
    mixer_out = []
    model.encoder.layers[0].mixer.register_forward_hook(lambda m, i, o: mixer_out.append(o.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(tmp_path, model, ClassificationTask(), epochs=3, amp="bf16")
    result = trainer.fit(toy_classification(n=16), toy_classification(n=8, seed=1))
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < 0.5 * sum(losses[:2]), losses
    assert math.isfinite(result["best"]["loss"]) and result["epoch"] == 3
    assert mixer_out and set(mixer_out) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_reference_scan_computes_in_float32_under_autocast(monkeypatch):
    """The step-by-step mixer path calls the scan outside autocast, from bf16 inputs, like the fused path: the
    reference scan's einsum would otherwise run in bf16."""
    torch.manual_seed(0)
    mixer = mamba.BiMambaMixer(d_model=24, scan_backend="reference")
    calls = []
    scan = mamba.selective_scan

    def spy(*args, **kwargs):
        calls.append((torch.is_autocast_enabled("cpu"), args[0].dtype))
        return scan(*args, **kwargs)

    monkeypatch.setattr(mamba, "selective_scan", spy)
    x = torch.randn(2, 20, 24)
    full = mixer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = mixer(x)
    half.float().sum().backward()
    assert calls == [(False, torch.float32)] * 2 + [(False, torch.bfloat16)] * 2
    err = ((half.double() - full.double()).norm() / full.double().norm()).item()
    assert half.dtype == torch.bfloat16 and 0 < err < 3e-2, err


def test_grad_clip_bounds_the_first_update(tmp_path):
    """optim.grad_clip clips the global gradient norm before the step: with plain SGD (lr 1, no momentum) the first
    update of all parameters is the clipped gradient, of norm grad_clip."""
    updates = {}
    for clip in (None, 0.01):
        model = small_classifier()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        cfg = TrainConfig(epochs=1, max_steps=1, batch_size=8, progress=False, checkpoint_every=100)
        optim = OptimConfig(name="sgd", lr=1.0, momentum=0.0, scheduler="none", weight_decay=0.0, grad_clip=clip)
        Trainer(model, ClassificationTask(), cfg, optim, tmp_path / str(clip), DistEnv()).fit(toy_classification())
        updates[clip] = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())
    assert updates[0.01] == pytest.approx(0.01, rel=1e-3) and updates[None] > 10 * 0.01, updates


def test_a_mask_larger_than_the_grid_is_capped_and_said_once_per_task(caplog):
    """32 frames x 128 mel = 8x2 patches: a 400-patch mask becomes 14 (two patches stay visible), with one warning
    per task (the flag once lived on the class, so a second task in the process never said it)."""
    torch.manual_seed(0)
    model = MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny", depth=2, input_tdim=32)))
    x = torch.randn(2, 32, 128)
    for _ in range(2):
        task = PretrainTask(mask_size=400, eval_mask_size=400)
        caplog.clear()
        with caplog.at_level("WARNING"):
            for _ in range(2):
                out = task.train_step(model, (x,))
        assert torch.isfinite(out["loss"]) and task._fit(model, 400) == 14 and task._fit(model, 10) == 10
        assert caplog.text.count("mask size 400 exceeds what a 8x2 patch grid allows; masking 14") == 1


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path):
    """A run killed mid-write leaves half a JSON line; the resumed run's log reads like an uninterrupted run's."""
    from ssamba.train.logger import RunLogger

    log = RunLogger(tmp_path, DistEnv())
    for step in (1, 2, 3):
        log.log("train", step, {"loss": 1.0 / step})
    log.close()
    path = tmp_path / "log.jsonl"
    whole = path.read_text()
    path.write_text(whole + '{"split": "train", "step": 4, "lo')  # killed mid-line
    log = RunLogger(tmp_path, DistEnv())
    log.truncate(2)
    log.log("train", 3, {"loss": 1.0 / 3})
    log.close()
    assert path.read_text() == whole
