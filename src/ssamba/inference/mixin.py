"""``predict``/``embed`` methods on the models that ``ssamba.load`` returns.

``models/`` must not depend on inference code, so the methods live here, in a mixin; ``ssamba.load`` switches the
loaded model's class to the matching subclass below (:func:`with_inference`).  The subclasses add no state, are
still :class:`AudioClassifier` / :class:`MaskedPatchModel` instances, and pickle like any module.
"""
from __future__ import annotations

from collections.abc import Iterable

from ssamba.audio.features import SAMPLE_RATE
from ssamba.inference.engine import Stats
from ssamba.inference.inputs import Audio
from ssamba.inference.long_audio import LengthPolicy
from ssamba.inference.predictor import Activation, Embedding, OnError, Prediction, Predictor
from ssamba.models.base import AudioModel
from ssamba.models.classifier import AudioClassifier
from ssamba.pretrain.model import MaskedPatchModel


class InferenceMixin:
    """Adds ``predict`` and ``embed``; every option of :class:`Predictor` and :class:`LengthPolicy` is a keyword."""

    def predictor(self, *, stats: Stats = "audioset", batch_size: int = 8, progress: bool = False,
                  min_frames: int | None = None, max_frames: int | None = None,
                  overlap_frames: int = 1000) -> Predictor:
        return Predictor(self, stats=stats, batch_size=batch_size, progress=progress,  # type: ignore[arg-type]
                         policy=LengthPolicy(min_frames, max_frames, overlap_frames))

    def predict(self, audio: Audio | Iterable[Audio], top_k: int = 5, *, sample_rate: int = SAMPLE_RATE,
                per_second: bool = False, activation: Activation = "auto", on_error: OnError = "report",
                embeddings: bool = False, **options) -> Prediction | list[Prediction]:
        """Top-k labels (names from the checkpoint's config) with scores; see :meth:`Predictor.predict`."""
        return self.predictor(**options).predict(audio, top_k=top_k, sample_rate=sample_rate,
                                                 per_second=per_second, activation=activation, on_error=on_error,
                                                 embeddings=embeddings)

    def embed(self, audio: Audio | Iterable[Audio], *, sample_rate: int = SAMPLE_RATE, timestamps: bool = True,
              on_error: OnError = "report", **options) -> Embedding | list[Embedding]:
        """Clip and time-stamped frame embeddings; see :meth:`Predictor.embed`."""
        return self.predictor(**options).embed(audio, sample_rate=sample_rate, timestamps=timestamps,
                                               on_error=on_error)


class Classifier(InferenceMixin, AudioClassifier):
    """An :class:`AudioClassifier` with ``predict``/``embed``."""


class PretrainModel(InferenceMixin, MaskedPatchModel):
    """A :class:`MaskedPatchModel` with ``embed`` (``predict`` needs a classification head)."""


_SUBCLASSES: dict[type, type] = {AudioClassifier: Classifier, MaskedPatchModel: PretrainModel}


def with_inference(model: AudioModel) -> AudioModel:
    """Give ``model`` the inference methods in place (returns it); other model types are returned unchanged."""
    subclass = _SUBCLASSES.get(type(model))
    if subclass is not None:
        model.__class__ = subclass
    return model
