"""The any-length strategy: how a clip of any duration becomes one or more encoder runs, and back.

1. Short clips (up to the model's trained input length) are zero-padded to that length in the raw log-mel domain,
   exactly as the official data loader did for training and evaluation (``min_frames`` changes this, e.g. to run
   short clips at their own length as SUPERB does).
2. Longer clips up to ``max_frames`` (default: 6000 frames = 60 s, or the trained length if that is longer) run in
   one pass at their own length, with the position embedding interpolated
   to it (SSAMBA's cost is linear in the length; SSAST's attention is quadratic).
3. Clips longer than ``max_frames`` are cut into windows of ``max_frames`` frames overlapping by
   ``overlap_frames`` (both rounded to the patch stride so all windows share one global column grid); the last
   window ends at the clip's end (less than one stride of padding), so it overlaps its neighbour more.  Every time
   column is taken from the window in which it lies furthest from an edge (the overlaps are split at their middle),
   so stitched frame embeddings are continuous.  Windows are batched, so the encoder's memory is bounded by the
   window length and the batch, not by the clip; the decoded waveform and its log-mel are held whole (~8 MB per
   minute of 16 kHz audio): an hour runs in under 2 GB.

Only columns whose centre lies inside the audio are reported (padding never yields a frame embedding), and every
clip runs at a length that depends on the clip alone, so batching never changes a result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ssamba.audio.fbank import FRAME_LENGTH_MS, FRAME_SHIFT_MS, clip_mean, fbank_batch, frame_geometry
from ssamba.audio.features import SAMPLE_RATE
from ssamba.inference.encoding import aligned_frames, column_count
from ssamba.models.config import EncoderConfig
from ssamba.models.heads import pool_per_second

#: longest single run by default (60 s): the Urban8K-style one-minute recordings run without windows
DEFAULT_MAX_FRAMES = 6000
#: overlap of consecutive windows by default (10 s), or half the window if that is shorter
DEFAULT_OVERLAP_FRAMES = 1000
#: frames per fbank chunk for long clips (the fbank's intermediates are ~8 kB per frame)
FBANK_CHUNK_FRAMES = 30000


@dataclass(frozen=True)
class LengthPolicy:
    """How clip lengths map to encoder runs (see the module docstring).

    ``min_frames``: shorter clips are padded to this many frames; ``None`` = the model's trained input length.
    ``max_frames``: longer clips are windowed; windows are this long and overlap by ``overlap_frames``; ``None`` =
    the larger of :data:`DEFAULT_MAX_FRAMES` and the model's trained length.  On a CPU without a fast scan kernel,
    shorter windows (e.g. the trained length) with a larger batch run long audio several times faster.
    ``overlap_frames``: ``None`` = :data:`DEFAULT_OVERLAP_FRAMES`, or half the window if that is shorter (so that
    lowering ``max_frames`` alone works).
    """

    min_frames: int | None = None
    max_frames: int | None = None
    overlap_frames: int | None = None

    def __post_init__(self) -> None:
        if self.min_frames is not None and self.min_frames < 1:
            raise ValueError(f"min_frames must be positive, got {self.min_frames}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be positive, got {self.max_frames}")
        if self.overlap_frames is not None and (
                self.overlap_frames < 0 or (self.max_frames is not None and self.overlap_frames >= self.max_frames)):
            raise ValueError(f"overlap_frames must be in [0, max_frames), got {self.overlap_frames} "
                             f"for max_frames={self.max_frames}")

    def overlap(self, window: int) -> int:
        """The overlap of windows of ``window`` frames."""
        return self.overlap_frames if self.overlap_frames is not None else min(DEFAULT_OVERLAP_FRAMES, window // 2)

    def window(self, config: EncoderConfig) -> int:
        """The window (= longest single run) in frames for a model, aligned to its patch stride."""
        frames = self.max_frames if self.max_frames is not None else max(DEFAULT_MAX_FRAMES, config.input_tdim)
        return aligned_frames(config, frames)


@dataclass(frozen=True)
class Run:
    """One encoder run of a clip: frames ``[start, start + frames)`` (padded past the clip's end), whose columns
    ``[keep_from, keep_to)`` of the clip's global column grid are kept.  ``offset`` is its first global column."""

    start: int
    frames: int
    offset: int
    keep_from: int
    keep_to: int


def plan_runs(num_frames: int, config: EncoderConfig, policy: LengthPolicy) -> list[Run]:
    """The runs that cover a clip of ``num_frames`` log-mel frames."""
    floor = policy.min_frames if policy.min_frames is not None else config.input_tdim
    window = policy.window(config)
    if aligned_frames(config, floor) > window:
        raise ValueError(f"max_frames={policy.max_frames} is shorter than the minimum run of {floor} frames")
    overlap = policy.overlap(window)
    if overlap >= window:
        raise ValueError(f"overlap_frames={overlap} must be shorter than the {window}-frame window")
    if max(num_frames, floor) == config.input_tdim:
        # exactly the trained input, as the official loader pads or cuts to it: with a stride that does not tile it
        # (128 frames, stride 10) the last frames fall outside every patch, as in training; aligning up would
        # stretch the position embedding to a column the model never saw
        return [Run(0, config.input_tdim, 0, 0, column_count(config, config.input_tdim))]
    length = aligned_frames(config, max(num_frames, floor))
    if length <= window:
        return [Run(0, length, 0, 0, column_count(config, length))]
    stride, width = config.tstride, column_count(config, window)
    # a window's columns span (width - 1) strides + a patch, so with a patch wider than the stride, windows that
    # merely touch as frames (little overlap) would skip the columns between them: the hop never passes the width
    hop = max(stride, min((window - overlap) // stride, width) * stride)
    count = math.ceil((num_frames - window) / hop) + 1
    offsets = [k * hop // stride for k in range(count - 1)]
    # the last window ends with the audio instead of running on past it: a window that is mostly padding would
    # weigh its padding into the clip's pooled vector (a 61 s clip: half its score from 59 s of zeros)
    offsets.append(math.ceil((num_frames - window) / stride))
    bounds = [0] + [(offsets[k] + offsets[k - 1] + width) // 2 for k in range(1, count)] + [offsets[-1] + width]
    return [Run(off * stride, window, off, bounds[k], bounds[k + 1]) for k, off in enumerate(offsets)]


def stitch(parts: list[Tensor], runs: list[Run]) -> Tensor:
    """Concatenate each run's kept columns (time is the second-to-last axis of every part)."""
    for part, run in zip(parts, runs):
        if not run.offset <= run.keep_from <= run.keep_to <= run.offset + part.shape[-2]:
            raise ValueError(f"run {run} keeps columns outside its {part.shape[-2]} (a plan that does not tile)")
    pieces = [p[..., r.keep_from - r.offset:r.keep_to - r.offset, :] for p, r in zip(parts, runs)]
    return torch.cat(pieces, dim=-2)


def column_centres_ms(config: EncoderConfig, columns: int) -> Tensor:
    """Centre of each column's audio span in milliseconds (float64): from the start of its first analysis window
    to the end of its last one."""
    first = torch.arange(columns, dtype=torch.float64) * config.tstride * FRAME_SHIFT_MS
    return first + ((config.tshape - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 2


def audio_columns(config: EncoderConfig, duration_ms: float, available: int) -> int:
    """How many leading columns to report: those centred inside the audio (at least one)."""
    centres = column_centres_ms(config, available)
    return max(1, int((centres <= duration_ms + 1e-9).sum()))


def log_mel(waveform: Tensor) -> Tensor:
    """Raw log-mel ``(frames, 128)`` of a mono 16 kHz clip ``(samples,)``, computed in chunks for long clips.

    The clip mean is removed over the whole clip first (as the official pipeline does) and every frame depends on
    its own samples only, so the chunks concatenate to exactly the one-shot result.
    """
    window, hop, _ = frame_geometry(SAMPLE_RATE)
    x = waveform[None]
    mean = clip_mean(x)
    total = 0 if x.shape[-1] < window else 1 + (x.shape[-1] - window) // hop
    if total <= FBANK_CHUNK_FRAMES:
        return fbank_batch(x, SAMPLE_RATE, mean=mean)[0]
    chunks = []
    for first in range(0, total, FBANK_CHUNK_FRAMES):
        last = min(first + FBANK_CHUNK_FRAMES, total)
        piece = x[:, first * hop:(last - 1) * hop + window]
        chunks.append(fbank_batch(piece, SAMPLE_RATE, mean=mean)[0])
    return torch.cat(chunks)


def per_second_pool(columns: Tensor, config: EncoderConfig, duration_s: float) -> Tensor:
    """Columns ``(T', D)`` -> one mean per second of audio ``(S, D)``, each column in the second holding its
    centre (time-aligned, see :func:`ssamba.models.heads.pool_per_second`)."""
    segments = max(1, math.ceil(duration_s - 1e-9))
    return pool_per_second(columns[None], 0, (1, columns.shape[0]), config.tshape, config.tstride,
                           segment_frames=round(1000 / FRAME_SHIFT_MS), num_segments=segments)[0]
