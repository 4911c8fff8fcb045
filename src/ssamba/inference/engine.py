"""Waveforms -> encoder outputs per clip: features, the any-length runs, length-grouped batches, stitching.

Each clip runs at a length that depends only on that clip (see :mod:`ssamba.inference.long_audio`), and a batch
only ever holds runs of one length, so no padding from another clip can reach a clip's tokens: a clip's outputs are
the same alone or batched with longer clips.
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ssamba.audio.features import SAMPLE_RATE, fit_length, normalize
from ssamba.audio.stats import NormStats, preset
from ssamba.inference.encoding import encode_any_length, time_columns
from ssamba.inference.long_audio import LengthPolicy, Run, audio_columns, column_centres_ms, log_mel, plan_runs, stitch
from ssamba.models.base import AudioModel
from ssamba.models.heads import pool_cls, pool_mean

Stats = str | NormStats | tuple[float, float]
Precision = Literal["fp32", "bf16"]
PRECISIONS = ("fp32", "bf16")


@dataclass
class Encoded:
    """One clip through the encoder.

    ``columns``: final-layer output per time column (mean over frequency rows), only columns centred inside the
    audio, ``(T', D)``; ``timestamps_ms``: their centres ``(T',)`` (float64; audio shorter than the first centre,
    87.5 ms, has its one column stamped at its middle); ``pooled``: what the classification
    head sees, the model's pooling over its whole run(s), averaged over windows by the columns each keeps;
    ``layers``: when asked for, the columns of every layer's states followed by the final output ``(L + 1, T', D)``
    (the states of ``encoder.hidden_states``).
    """

    columns: Tensor
    timestamps_ms: Tensor
    pooled: Tensor
    duration_s: float
    layers: Tensor | None = None


def model_stats(model: AudioModel) -> Stats:
    """The normalisation ``model`` was trained with (``ModelConfig.norm_stats``, saved by ``ssamba finetune`` and
    ``pretrain``), else AudioSet's, which SSAMBA's pretraining and the official checkpoints use."""
    saved = getattr(getattr(model, "config", None), "norm_stats", None)
    return tuple(saved) if saved is not None else "audioset"


def resolve_stats(stats: Stats) -> NormStats:
    """A preset name ("audioset", "esc50", ...), a :class:`NormStats` or a ``(mean, std)`` pair."""
    if isinstance(stats, str):
        return preset(stats)
    if not isinstance(stats, NormStats):
        mean, std = stats
        stats = NormStats(float(mean), float(std))
    if not (math.isfinite(stats.mean) and math.isfinite(stats.std) and stats.std > 0):
        raise ValueError(f"normalisation statistics need a finite mean and a positive std, got mean {stats.mean}, "
                         f"std {stats.std}")
    return stats


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no drop path) and no autograd inside; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


class ClipEncoder:
    """Encodes lists of mono 16 kHz waveforms with one model, following a :class:`LengthPolicy`.

    ``batch_size`` is the number of equally long runs per forward pass (windows of one long clip count
    separately, so a long clip is batched with itself).  ``precision="bf16"`` runs the encoder under bfloat16
    autocast, one autocast region per ``encode`` call (where matmuls go through oneDNN, autocast then casts the
    float32 weights once for all its clips; the fused CPU mixers on AMX round them as they pack them); the scans
    still compute in float32 and the outputs are float32 (speed: README, "bfloat16 inference on a CPU").
    """

    def __init__(self, model: AudioModel, stats: Stats | None = None, policy: LengthPolicy | None = None,
                 batch_size: int = 8, precision: Precision = "fp32") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "fp32" and any(m.weight.dtype == torch.bfloat16 for m in model.modules()
                                       if isinstance(m, nn.Linear)):
            raise ValueError("this model's matmul weights are bfloat16 (cast_matmul_weights): run it with "
                             "precision='bf16'")
        self.model = model
        self.stats = resolve_stats(model_stats(model) if stats is None else stats)
        self.policy = policy or LengthPolicy()
        self.batch_size = batch_size
        self.precision = precision

    @property
    def config(self):
        return self.model.encoder.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def run_input(self, raw: Tensor, run: Run) -> Tensor:
        """Normalised ``(run.frames, mel)`` input of one run: the clip's frames, zero-padded in the raw log-mel
        domain past its end (the official padding)."""
        return normalize(fit_length(raw[run.start:run.start + run.frames], run.frames), self.stats.mean,
                         self.stats.std)

    def encode(self, waveforms: list[Tensor], layers: bool = False) -> list[Encoded]:
        """Encode every waveform ``(samples,)`` (16 kHz, validated) into an :class:`Encoded`."""
        with torch.autocast(self.device.type, enabled=False):  # features in float32, even inside a caller's autocast
            raws = [log_mel(w.to(torch.float32)) for w in waveforms]
        plans = [plan_runs(r.shape[0], self.config, self.policy) for r in raws]
        groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for clip, runs in enumerate(plans):
            for index, run in enumerate(runs):
                groups[run.frames].append((clip, index))
        outputs: dict[tuple[int, int], tuple[list[Tensor], Tensor]] = {}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with evaluating(self.model), autocast:
            for frames, jobs in groups.items():
                for first in range(0, len(jobs), self.batch_size):
                    batch = jobs[first:first + self.batch_size]
                    x = torch.stack([self.run_input(raws[c], plans[c][i]) for c, i in batch]).to(self.device)
                    for job, out in zip(batch, self._forward(x, layers)):
                        outputs[job] = out
        return [self._assemble(plans[c], [outputs[(c, i)] for i in range(len(plans[c]))],
                               waveforms[c].shape[-1] / SAMPLE_RATE) for c in range(len(raws))]

    def _forward(self, x: Tensor, layers: bool) -> list[tuple[list[Tensor], Tensor]]:
        """Per batch item: (columns of each requested state, pooled vector), on the CPU."""
        encoder = self.model.encoder
        states = encode_any_length(encoder, x, layers)
        rows, ncls = encoder.grid[0], encoder.num_cls_tokens
        cols = [time_columns(s, ncls, rows).float().cpu() for s in states]
        pooling = getattr(self.model.config, "pooling", "mean")
        pooled = (pool_cls if pooling == "cls" else pool_mean)(states[-1], ncls).float().cpu()
        return [([c[b] for c in cols], pooled[b]) for b in range(x.shape[0])]

    def _assemble(self, runs: list[Run], parts: list[tuple[list[Tensor], Tensor]], duration_s: float) -> Encoded:
        per_state = [stitch([p[0][s] for p in parts], runs) for s in range(len(parts[0][0]))]
        keep = audio_columns(self.config, duration_s * 1000, per_state[-1].shape[0])
        weights = torch.tensor([r.keep_to - r.keep_from for r in runs], dtype=torch.float32)
        pooled = (torch.stack([p[1] for p in parts]) * weights[:, None]).sum(0) / weights.sum()
        layers = torch.stack([s[:keep] for s in per_state]) if len(per_state) > 1 else None
        stamps = column_centres_ms(self.config, keep)
        if stamps[-1] > duration_s * 1000:  # audio shorter than its one column's centre: stamped at its middle
            stamps = torch.full_like(stamps, duration_s * 500)
        return Encoded(per_state[-1][:keep], stamps, pooled, duration_s, layers)


def nonfinite_output(wave: Tensor, enc: Encoded) -> str | None:
    """Why ``enc`` is no result when the model's output for ``wave`` is not finite (e.g. float audio far outside
    [-1, 1]: a NaN score or embedding must not be reported as one); None when it is finite."""
    if bool(torch.isfinite(enc.pooled).all()) and bool(torch.isfinite(enc.columns).all()):
        return None
    return (f"the model's output is not finite (peak amplitude {float(wave.abs().max()):.3g}; float audio is "
            "expected in [-1, 1])")
