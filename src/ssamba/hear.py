"""HEAR 2021 API entry point: ``hear-validator ssamba.hear -m CHECKPOINT`` (see :mod:`ssamba.inference.hear`)."""
from __future__ import annotations

from ssamba.inference.hear import HearModel, get_scene_embeddings, get_timestamp_embeddings, load_model

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings"]
