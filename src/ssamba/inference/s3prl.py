"""An s3prl/SUPERB upstream (the ``UpstreamExpert`` convention) for SSAMBA and SSAST checkpoints.

s3prl is never imported (it pulls torchaudio).  To evaluate on SUPERB as the paper did (SID, ER), add a folder
``s3prl/upstream/ssamba/`` with ``expert.py`` = ``from ssamba.inference.s3prl import UpstreamExpert`` and
``hubconf.py`` = ``from ssamba.inference.s3prl import ssamba_local``, register it in ``s3prl/hub.py``, then run
``-u ssamba_local -k CHECKPOINT``.

Every clip runs at its own length (no padding to the pretraining length, short clips padded to one patch only);
``hidden_states`` are the states of ``encoder.hidden_states`` (SSAMBA: one per bidirectional block pair, so 13 for
24 blocks; SSAST: every block) plus the final output, averaged over the frequency rows of the patch grid: one vector
per time column, ``tstride * 160`` samples apart.  Each clip has its columns centred inside the audio, and at least
``round(samples / (tstride * 160))`` steps (the number s3prl's featurizer keeps; the last column repeats where the
clip has fewer), then zeros up to the longest clip.  The upstream is
frozen (features are computed without gradients), which is how SUPERB's SID and ER tasks use it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from ssamba.audio.fbank import FRAME_SHIFT_MS
from ssamba.audio.features import SAMPLE_RATE
from ssamba.inference.engine import ClipEncoder
from ssamba.inference.inputs import MIN_SAMPLES
from ssamba.inference.long_audio import LengthPolicy
from ssamba.loading import load

_OPTIONS = ("stats", "max_frames", "overlap_frames", "batch_size")


class UpstreamExpert(nn.Module):
    """``forward(list of 16 kHz waveforms (samples,)) -> {"hidden_states": [(B, T, D), ...], ...}``, padded with
    zeros to the longest clip.  ``model_config``: an optional YAML file with ``stats``, ``max_frames``,
    ``overlap_frames`` or ``batch_size``; keyword arguments override it."""

    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        options: dict[str, Any] = {}
        if model_config:
            options.update(yaml.safe_load(Path(model_config).read_text()) or {})
        options.update({k: v for k, v in kwargs.items() if k in _OPTIONS})
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise ValueError(f"unknown upstream options {sorted(unknown)}; known: {', '.join(_OPTIONS)}")
        self.model = load(ckpt)
        cfg = self.model.encoder.config
        policy = LengthPolicy(cfg.tshape, options.get("max_frames"), options.get("overlap_frames"))
        self.clip_encoder = ClipEncoder(self.model, options.get("stats"), policy,
                                        options.get("batch_size", 8))

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Input samples per output step: one time column every ``tstride`` fbank frames of 10 ms."""
        return int(self.model.encoder.config.tstride * SAMPLE_RATE * FRAME_SHIFT_MS / 1000)

    def forward(self, wavs: list[Tensor]) -> dict[str, Any]:
        if not wavs:
            raise ValueError("UpstreamExpert got an empty list of waveforms")
        for k, w in enumerate(wavs):
            if w.ndim != 1 or w.shape[0] < MIN_SAMPLES:
                raise ValueError(f"waveform {k}: expected (samples,) with at least {MIN_SAMPLES} samples, "
                                 f"got shape {tuple(w.shape)}")
        device = wavs[0].device
        encoded = self.clip_encoder.encode([w.detach().to("cpu", torch.float32) for w in wavs], layers=True)
        # s3prl's featurizer keeps round(samples / rate) steps of each clip: a clip with fewer columns of its own
        # repeats its last one up to that, or a zero padding row would pass for a feature
        rate = self.get_downsample_rates()
        steps = [max(e.layers.shape[1], round(w.shape[0] / rate)) for e, w in zip(encoded, wavs)]
        padded = torch.zeros(len(encoded), encoded[0].layers.shape[0], max(steps), encoded[0].layers.shape[2])
        for b, (e, n) in enumerate(zip(encoded, steps)):
            padded[b, :, :e.layers.shape[1]] = e.layers
            padded[b, :, e.layers.shape[1]:n] = e.layers[:, -1:]
        hidden = [padded[:, k].to(device) for k in range(padded.shape[1])]
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}


def ssamba_local(ckpt: str, *args: Any, **kwargs: Any) -> UpstreamExpert:
    """s3prl hub entry: ``-u ssamba_local -k CHECKPOINT`` (a saved folder, an official ``.pth`` or ``hf://...``)."""
    return UpstreamExpert(ckpt, *args, **kwargs)
