"""``predict`` and ``embed``: from files or waveforms to top-k labels or embeddings, batch-safe and error-tolerant.

A batch job never stops at a bad file: each result carries either its values or the error that names the source
(``on_error="raise"`` raises instead).  A single clip (one path or one 1-D waveform) returns one result and raises
on error, as there is nothing else to continue with.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from ssamba.audio.features import SAMPLE_RATE
from ssamba.audio.io import AudioLoadError, MonoPolicy
from ssamba.inference.engine import ClipEncoder, Encoded, Precision, Stats, nonfinite_output
from ssamba.inference.inputs import Audio, Source, as_sources
from ssamba.inference.long_audio import LengthPolicy, per_second_pool
from ssamba.models.base import AudioModel

logger = logging.getLogger(__name__)

OnError = Literal["report", "raise"]
Activation = Literal["auto", "softmax", "sigmoid", "none"]
#: AudioSet's 527 classes are multi-label (trained with BCE): "auto" uses a sigmoid for them, a softmax otherwise
MULTI_LABEL_DIMS = frozenset({527})


@dataclass
class Prediction:
    """Top-k ``(label, score)`` of one clip; ``per_second`` holds a top-k list per second when asked for."""

    source: str
    top: list[tuple[str, float]] = field(default_factory=list)
    scores: np.ndarray | None = None
    duration_s: float | None = None
    per_second: list[list[tuple[str, float]]] | None = None
    error: str | None = None
    embedding: Embedding | None = None  # with ``embeddings=True``: the clip's embeddings from the same pass

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Embedding:
    """Clip embedding ``(D,)`` and, when asked for, frame embeddings ``(T', D)`` with their centres in ms."""

    source: str
    clip: np.ndarray | None = None
    frames: np.ndarray | None = None
    timestamps_ms: np.ndarray | None = None
    duration_s: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Predictor:
    """Inference with one model. ``stats``: the normalisation the model was trained with (a preset name such as
    "audioset", "esc50", "speechcommands", or ``(mean, std)``; by default the model's own ``config.norm_stats``,
    else AudioSet's); ``precision``:
    "fp32", or "bf16" for the encoder under bfloat16 autocast (see :class:`ClipEncoder`)."""

    def __init__(self, model: AudioModel, *, stats: Stats | None = None, policy: LengthPolicy | None = None,
                 batch_size: int = 8, progress: bool = False, mono: MonoPolicy = "first",
                 precision: Precision = "fp32") -> None:
        self.encoder = ClipEncoder(model, stats, policy, batch_size, precision)
        self.model = model
        self.progress = progress
        self.mono = mono

    # -- iteration over sources, a batch of clips at a time ---------------------------------------------------

    def iter_encoded(self, sources: list[Source], layers: bool = False, desc: str = "clips"
                     ) -> Iterator[tuple[Source, Encoded | AudioLoadError]]:
        """Yield each source with its :class:`Encoded` or its loading error, in order; only one batch of clips is
        in memory at a time."""
        size = self.encoder.batch_size
        with tqdm(total=len(sources), desc=desc, unit="clip", disable=None if self.progress else True) as bar:
            for first in range(0, len(sources), size):
                chunk = sources[first:first + size]
                loaded: list[Source] = []
                waves, results = [], {}
                for src in chunk:
                    try:
                        waves.append(src.load())
                        loaded.append(src)
                    except AudioLoadError as exc:
                        logger.warning("skipping %s", exc)
                        results[id(src)] = exc
                for src, wave, enc in zip(loaded, waves, self.encoder.encode(waves, layers) if waves else []):
                    results[id(src)] = _check_finite(src, wave, enc)
                for src in chunk:
                    yield src, results[id(src)]
                bar.update(len(chunk))

    # -- predict ----------------------------------------------------------------------------------------------

    def iter_predict(self, sources: list[Source], top_k: int = 5, per_second: bool = False,
                     activation: Activation = "auto", embeddings: bool = False) -> Iterator[Prediction]:
        head = getattr(self.model, "head", None)
        if head is None:
            raise TypeError("this is a pretraining model without a classification head: use embed(), or load it "
                            "with label_dim=... and fine-tune it first")
        labels = self.model.config.labels or [str(i) for i in range(self.model.config.label_dim)]
        top_k = max(1, min(top_k, len(labels)))
        act = _activation(activation, self.model.config.label_dim)
        # a head whose Linear weights were cast to bf16 (cast_matmul_weights) runs under bf16 autocast, as the encoder
        cast_head = any(m.weight.dtype == torch.bfloat16 for m in head.modules() if isinstance(m, torch.nn.Linear))
        head_autocast = torch.autocast(self.encoder.device.type, dtype=torch.bfloat16, enabled=cast_head)
        for src, enc in self.iter_encoded(sources, desc="predict"):
            if isinstance(enc, AudioLoadError):
                yield Prediction(src.name, error=str(enc))
                continue
            with torch.inference_mode(), head_autocast:
                scores = act(head(enc.pooled.to(self.encoder.device)[None]).float())[0].cpu()
                seconds = None
                if per_second:
                    pooled = per_second_pool(enc.columns, self.encoder.config, enc.duration_s)
                    per = act(head(pooled.to(self.encoder.device)).float()).cpu()
                    seconds = [_top(row, labels, top_k) for row in per]
            yield Prediction(src.name, _top(scores, labels, top_k), scores.numpy(), enc.duration_s, seconds,
                             embedding=_embedding(src, enc, True) if embeddings else None)

    def predict(self, audio: Audio | Iterable[Audio], *, top_k: int = 5, sample_rate: int = SAMPLE_RATE,
                per_second: bool = False, activation: Activation = "auto", on_error: OnError = "report",
                embeddings: bool = False) -> Prediction | list[Prediction]:
        """Top-k labels with scores for a file, a folder, a waveform, or a batch of any of these.

        ``embeddings=True`` also returns each clip's :class:`Embedding` (as ``embed`` gives it) from the same
        encoder pass, which halves the cost when both are wanted for long recordings.
        """
        sources, single = as_sources(audio, sample_rate, self.mono)
        results = list(self.iter_predict(sources, top_k, per_second, activation, embeddings))
        return _finish(results, single, on_error)

    # -- embed ------------------------------------------------------------------------------------------------

    def iter_embed(self, sources: list[Source], timestamps: bool = True) -> Iterator[Embedding]:
        for src, enc in self.iter_encoded(sources, desc="embed"):
            if isinstance(enc, AudioLoadError):
                yield Embedding(src.name, error=str(enc))
                continue
            yield _embedding(src, enc, timestamps)

    def embed(self, audio: Audio | Iterable[Audio], *, sample_rate: int = SAMPLE_RATE, timestamps: bool = True,
              on_error: OnError = "report") -> Embedding | list[Embedding]:
        """Clip embeddings (mean of the final-layer frame embeddings of the audio) and time-stamped frame
        embeddings, for a file, a folder, a waveform, or a batch of any of these."""
        sources, single = as_sources(audio, sample_rate, self.mono)
        return _finish(list(self.iter_embed(sources, timestamps)), single, on_error)


def _check_finite(src: Source, wave: torch.Tensor, enc: Encoded) -> Encoded | AudioLoadError:
    """``enc``, or an error naming the clip when the model's output for it is not finite (``nonfinite_output``)."""
    reason = nonfinite_output(wave, enc)
    if reason is None:
        return enc
    error = AudioLoadError(src.name, reason)
    logger.warning("skipping %s", error)
    return error


def _embedding(src: Source, enc: Encoded, timestamps: bool) -> Embedding:
    frames = enc.columns.numpy() if timestamps else None
    stamps = enc.timestamps_ms.numpy() if timestamps else None
    return Embedding(src.name, enc.columns.mean(0).numpy(), frames, stamps, enc.duration_s)


def _activation(name: Activation, label_dim: int):
    if name == "auto":
        name = "sigmoid" if label_dim in MULTI_LABEL_DIMS else "softmax"
    table = {"softmax": lambda z: z.softmax(-1), "sigmoid": torch.sigmoid, "none": lambda z: z}
    if name not in table:
        raise ValueError(f"activation must be auto, softmax, sigmoid or none, got {name!r}")
    return table[name]


def _top(scores: torch.Tensor, labels: list[str], k: int) -> list[tuple[str, float]]:
    values, index = scores.topk(k)
    return [(labels[i], float(v)) for v, i in zip(values.tolist(), index.tolist())]


def _finish(results: list, single: bool, on_error: OnError):
    if on_error not in ("report", "raise"):
        raise ValueError(f"on_error must be 'report' or 'raise', got {on_error!r}")
    failed = [r for r in results if r.error is not None]
    if failed and (single or on_error == "raise"):
        raise AudioLoadError(failed[0].source, failed[0].error.removeprefix(f"{failed[0].source}: "))
    if failed:
        logger.warning("%d of %d inputs failed: %s", len(failed), len(results),
                       "; ".join(r.error for r in failed[:5]) + (" ..." if len(failed) > 5 else ""))
    return results[0] if single else results
