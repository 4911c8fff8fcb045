"""``predict``/``embed`` methods on the models that ``ssamba.load`` returns.

``models/`` must not depend on inference code, so the methods live here, in :class:`InferenceMixin`, and
:func:`install` (run by :mod:`ssamba.loading`, i.e. on ``import ssamba``) attaches them to the model base class
:class:`ssamba.models.base.AudioModel`.  Models keep their own classes (an :class:`AudioClassifier` stays exactly
that type) and gain no state; ``predict`` needs a classification head, ``embed`` works on any model.
"""
from __future__ import annotations

from collections.abc import Iterable

from ssamba.audio.features import SAMPLE_RATE
from ssamba.audio.io import MonoPolicy
from ssamba.inference.engine import Precision, Stats
from ssamba.inference.inputs import Audio
from ssamba.inference.long_audio import LengthPolicy
from ssamba.inference.predictor import Activation, Embedding, OnError, Prediction, Predictor
from ssamba.models.base import AudioModel


class InferenceMixin:
    """Adds ``predict`` and ``embed``; every option of :class:`Predictor` and :class:`LengthPolicy` is a keyword."""

    def predictor(self, *, stats: Stats | None = None, batch_size: int = 8, progress: bool = False,
                  min_frames: int | None = None, max_frames: int | None = None, overlap_frames: int | None = None,
                  mono: MonoPolicy = "first", precision: Precision = "fp32") -> Predictor:
        """``mono``: how multichannel files become mono ("first" channel, or "mean" of all channels);
        ``precision``: "fp32" or "bf16" (bfloat16 autocast for the encoder)."""
        return Predictor(self, stats=stats, batch_size=batch_size, progress=progress,  # type: ignore[arg-type]
                         policy=LengthPolicy(min_frames, max_frames, overlap_frames), mono=mono,
                         precision=precision)

    def predict(self, audio: Audio | Iterable[Audio], top_k: int = 5, *, sample_rate: int = SAMPLE_RATE,
                per_second: bool = False, activation: Activation = "auto", on_error: OnError = "report",
                embeddings: bool = False, stats: Stats | None = None, batch_size: int = 8, progress: bool = False,
                min_frames: int | None = None, max_frames: int | None = None, overlap_frames: int | None = None,
                mono: MonoPolicy = "first", precision: Precision = "fp32") -> Prediction | list[Prediction]:
        """Top-k labels (names from the checkpoint's config) with scores; see :meth:`Predictor.predict` (and
        :meth:`predictor` for the options after ``embeddings``)."""
        predictor = self.predictor(stats=stats, batch_size=batch_size, progress=progress, min_frames=min_frames,
                                   max_frames=max_frames, overlap_frames=overlap_frames, mono=mono,
                                   precision=precision)
        return predictor.predict(audio, top_k=top_k, sample_rate=sample_rate, per_second=per_second,
                                 activation=activation, on_error=on_error, embeddings=embeddings)

    def embed(self, audio: Audio | Iterable[Audio], *, sample_rate: int = SAMPLE_RATE, timestamps: bool = True,
              on_error: OnError = "report", stats: Stats | None = None, batch_size: int = 8, progress: bool = False,
              min_frames: int | None = None, max_frames: int | None = None, overlap_frames: int | None = None,
              mono: MonoPolicy = "first", precision: Precision = "fp32") -> Embedding | list[Embedding]:
        """Clip and time-stamped frame embeddings; see :meth:`Predictor.embed` (and :meth:`predictor` for the
        options after ``on_error``)."""
        predictor = self.predictor(stats=stats, batch_size=batch_size, progress=progress, min_frames=min_frames,
                                   max_frames=max_frames, overlap_frames=overlap_frames, mono=mono,
                                   precision=precision)
        return predictor.embed(audio, sample_rate=sample_rate, timestamps=timestamps, on_error=on_error)


_METHODS = ("predictor", "predict", "embed")


def install() -> None:
    """Give every :class:`AudioModel` (classifiers and pretraining models, however they were built) the methods of
    :class:`InferenceMixin`.  Called once when :mod:`ssamba.loading` is imported; idempotent.  Installing on the
    base class keeps ``type(ssamba.load(...))`` the plain model class."""
    for name in _METHODS:
        current = AudioModel.__dict__.get(name)
        if current is not None and current is not InferenceMixin.__dict__[name]:
            raise RuntimeError(f"AudioModel already defines {name!r}; refusing to replace it")
        setattr(AudioModel, name, InferenceMixin.__dict__[name])
