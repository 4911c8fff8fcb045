"""Inference: labels and embeddings from audio of any length, plus the HEAR and s3prl adapters.

``ssamba.load(path)`` returns models with ``predict``/``embed`` (see :mod:`ssamba.inference.mixin`); the same is
available for any model through :class:`Predictor`.  Modules: ``encoding`` (any-length encoder runs),
``long_audio`` (the length strategy and windowing), ``engine`` (batched encoding of clips), ``predictor``
(predict/embed with per-file errors), ``hear`` (HEAR 2021 API, also as ``ssamba.hear``), ``s3prl`` (SUPERB
upstream).  The HEAR and s3prl adapters are not imported here; ``hf://`` references are :mod:`ssamba.hub`'s.
"""
from __future__ import annotations

from ssamba.inference.engine import ClipEncoder, Encoded
from ssamba.inference.long_audio import LengthPolicy
from ssamba.inference.predictor import Embedding, Prediction, Predictor

__all__ = ["ClipEncoder", "Encoded", "Embedding", "LengthPolicy", "Prediction", "Predictor"]
