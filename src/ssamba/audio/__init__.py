"""Audio frontend: loading, resampling, the Kaldi-compatible fbank and the official feature pipeline.

Public API (torch tensors in and out, numpy accepted)::

    waveform, sr = load_audio(path)                      # float32 (channels, samples), channel 0 by default
    y = resample(waveform, sr, 16000)                    # reference windowed-sinc resampler, batched
    fb = fbank(y, 16000)                                 # (frames, 128) after mean removal, before padding
    x = features(waveform, sr, 1024, mean, std)          # (1024, 128): the whole evaluation pipeline
"""
from __future__ import annotations

from ssamba.audio.augment import AugmentConfig
from ssamba.audio.fbank import fbank, fbank_batch, num_frames
from ssamba.audio.features import FeatureConfig, features, features_batch
from ssamba.audio.io import AudioLoadError, load_audio, to_mono
from ssamba.audio.resample import resample
from ssamba.audio.stats import PRESETS, NormStats

__all__ = [
    "AudioLoadError", "AugmentConfig", "FeatureConfig", "NormStats", "PRESETS", "fbank", "fbank_batch",
    "features", "features_batch", "load_audio", "num_frames", "resample", "to_mono",
]
