"""The HEAR 2021 common API (``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``), importable as
``ssamba.hear`` so that ``hear-validator ssamba.hear -m CHECKPOINT`` and the hear-eval-kit can use it.

Embeddings follow the any-length strategy of :mod:`ssamba.inference.long_audio`: the model's own time steps are
the final-layer patch tokens averaged over frequency, one per time column (every ``tstride * 10`` ms, centred on
the column's audio span, only columns centred inside the audio); the scene embedding is their mean.  HEAR asks
for timestamps at most 50 ms apart (its event tasks are scored at that resolution), and a column is 100 ms
(stride 10) or 160 ms (stride 16) wide, so the timestamp embeddings are the columns linearly interpolated onto a
grid of ``hop = column spacing / k`` (``k`` the smallest with ``hop <= max_timestamp_hop_ms``: 50 ms or 40 ms),
which keeps every column as it is at every ``k``-th stamp; ``max_timestamp_hop_ms=None`` gives the columns alone.
Audio longer than ``max_frames`` is windowed, so the encoder's memory does not grow with the length (the
waveform and its log-mel do: ~8 MB a minute).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssamba.audio.features import SAMPLE_RATE
from ssamba.inference.engine import ClipEncoder, Encoded, nonfinite_output
from ssamba.inference.inputs import MIN_SAMPLES
from ssamba.inference.long_audio import LengthPolicy
from ssamba.loading import load
from ssamba.models.base import AudioModel

#: HEAR's suggested largest spacing of timestamps
MAX_TIMESTAMP_HOP_MS = 50.0
#: used when ``load_model`` gets no path: the official SSAMBA-tiny pretrained checkpoint on the Hugging Face hub
DEFAULT_MODEL = "hf://attentionisallyouneed369/ssamba/ssamba_tiny_400.pth"


class HearModel(nn.Module):
    """An ssamba model with the attributes HEAR requires; ``.to(device)`` moves it like any module."""

    sample_rate = SAMPLE_RATE

    def __init__(self, model: AudioModel, stats: str | tuple[float, float] | None = None,
                 policy: LengthPolicy | None = None, batch_size: int = 8,
                 max_timestamp_hop_ms: float | None = MAX_TIMESTAMP_HOP_MS) -> None:
        super().__init__()
        if max_timestamp_hop_ms is not None and not max_timestamp_hop_ms > 0:
            raise ValueError(f"max_timestamp_hop_ms must be positive (or None), got {max_timestamp_hop_ms}")
        self.model = model.eval()
        self.clip_encoder = ClipEncoder(model, stats, policy, batch_size)
        self.max_timestamp_hop_ms = max_timestamp_hop_ms
        dim = int(model.encoder.embed_dim)
        self.scene_embedding_size = dim
        self.timestamp_embedding_size = dim

    def encode(self, audio: Tensor) -> list[Encoded]:
        """``(n_sounds, n_samples)`` at 16 kHz -> one :class:`Encoded` per sound."""
        if not isinstance(audio, Tensor) or audio.ndim != 2:
            raise ValueError(f"HEAR audio must be a (n_sounds, n_samples) tensor, got "
                             f"{getattr(audio, 'shape', type(audio).__name__)}")
        if audio.shape[1] < MIN_SAMPLES:
            raise ValueError(f"HEAR audio of {audio.shape[1]} samples is shorter than one 25 ms analysis window")
        if not bool(torch.isfinite(audio).all()):
            raise ValueError("HEAR audio contains NaN or infinite samples")
        encoded = self.clip_encoder.encode([a.detach().to("cpu", torch.float32) for a in audio])
        for k, e in enumerate(encoded):
            reason = nonfinite_output(audio[k], e)
            if reason is not None:
                raise ValueError(f"HEAR sound {k}: {reason}")
        return encoded


def load_model(model_file_path: str = "", *, stats: str | tuple[float, float] | None = None,
               min_frames: int | None = None, max_frames: int | None = None, overlap_frames: int | None = None,
               batch_size: int = 8, max_timestamp_hop_ms: float | None = MAX_TIMESTAMP_HOP_MS,
               **load_options) -> HearModel:
    """Load a checkpoint (our folder, an official ``.pth`` or ``hf://...``; the official SSAMBA-tiny from the hub
    when empty) for the HEAR API.  ``load_options`` go to :func:`ssamba.load`."""
    model = load(model_file_path or DEFAULT_MODEL, **load_options)
    return HearModel(model, stats, LengthPolicy(min_frames, max_frames, overlap_frames), batch_size,
                     max_timestamp_hop_ms)


def interpolate_columns(columns: Tensor, stamps: Tensor, max_hop_ms: float | None) -> tuple[Tensor, Tensor]:
    """Columns ``(T, D)`` at regular ``stamps`` ``(T,)`` -> linearly interpolated onto ``hop = spacing / k``
    (the smallest ``k`` with ``hop <= max_hop_ms``), from the first column to the last; every ``k``-th row is a
    column unchanged."""
    if max_hop_ms is None or stamps.shape[0] < 2:
        return columns, stamps
    spacing = float(stamps[1] - stamps[0])
    k = math.ceil(spacing / max_hop_ms - 1e-9)
    if k <= 1:
        return columns, stamps
    steps = (stamps.shape[0] - 1) * k + 1
    position = torch.arange(steps, dtype=torch.float64) / k
    left = position.floor().long().clamp(max=stamps.shape[0] - 2)
    weight = (position - left).to(columns.dtype)[:, None]
    values = columns[left] * (1 - weight) + columns[left + 1] * weight
    values[::k] = columns  # exact at the columns
    return values, stamps[0] + position * spacing


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """``(n_sounds, n_timestamps, timestamp_embedding_size)`` float32 embeddings and ``(n_sounds, n_timestamps)``
    timestamps in milliseconds, on the audio's device (at most ``model.max_timestamp_hop_ms`` apart)."""
    pairs = [interpolate_columns(e.columns, e.timestamps_ms, model.max_timestamp_hop_ms)
             for e in model.encode(audio)]
    if not pairs:  # no sounds: empty results of the documented ranks
        return (torch.zeros(0, 0, model.timestamp_embedding_size, device=audio.device),
                torch.zeros(0, 0, device=audio.device))
    embeddings = torch.stack([columns for columns, _ in pairs]).to(audio.device, torch.float32)
    stamps = torch.stack([stamps for _, stamps in pairs]).to(audio.device, torch.float32)
    return embeddings, stamps


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """``(n_sounds, scene_embedding_size)`` float32: the mean of each sound's columns (the clip embedding of
    ``embed``; with interpolated timestamps, not exactly the mean of the timestamp embeddings)."""
    encoded = model.encode(audio)
    if not encoded:
        return torch.zeros(0, model.scene_embedding_size, device=audio.device)
    return torch.stack([e.columns.mean(0) for e in encoded]).to(audio.device, torch.float32)
