"""Bit-level parity check, run by test_fbank.py in a subprocess whose MKL takes its SSE4.2 code path.

torch's float32 ``log`` and its FFT go through MKL, whose results differ in the last bit between CPU code paths
(AVX-512 vs SSE4.2). The golden fixtures were made on the SSE4.2 path: the float32 mel matrix differs by one ulp
of ``log`` in 41 weights on other paths, and deep spectral valleys amplify such bits. The variable must be set
before MKL loads, hence a separate process. Prints a JSON object of maximum absolute errors.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from _audio_helpers import fixture

from ssamba.audio.fbank import fbank, mel_banks
from ssamba.audio.features import features, fit_length, normalize


def main() -> None:
    torch.set_num_threads(1)
    mel, fb, pipe = fixture("melbank"), fixture("fbank"), fixture("pipeline")
    errors: dict[str, float] = {}
    for sr in (16000, 8000):
        errors[f"mel_{sr}"] = float(np.abs(mel_banks(sr).numpy() - mel[f"mel_banks_{sr}_with_nyquist"]).max())
    for case in fb["cases"].tolist():
        if f"out_{case}" in fb:
            got = fbank(fb[f"in_{case}"], int(fb[f"sr_{case}"]), mean=fb[f"mean_{case}"])
            errors[f"fbank_{case}"] = float(np.abs(got.numpy() - fb[f"out_{case}"]).max())
    for case in ("speech_16k", "mix_10s", "chirp_3s"):
        length = int(pipe[f"target_length_{case}"])
        for name in ("audioset", "esc50"):
            mean, std = pipe[f"stats_{name}"].tolist()
            ref = pipe[f"out_{case}_t{length}_{name}"]
            stored = normalize(fit_length(fbank(pipe[f"in_{case}"], mean=fb[f"mean_{case}"]), length), mean, std)
            errors[f"pipeline_stored_mean_{case}_{name}"] = float(np.abs(stored.numpy() - ref).max())
            recomputed = features(pipe[f"in_{case}"], 16000, length, mean, std)
            errors[f"pipeline_{case}_{name}"] = float(np.abs(recomputed.numpy() - ref).max())
    print(json.dumps(errors))


if __name__ == "__main__":
    main()
