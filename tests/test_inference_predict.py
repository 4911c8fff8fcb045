"""``model.predict`` / ``model.embed``: exact against the official evaluation path, files and waveforms at any
rate, tones from 0.1 s to 10 min, batch independence (padding never leaks), and per-input errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _inference_helpers import (  # noqa: F401
    FINETUNE, LABELS, OFFICIAL, PRETRAIN, one_thread, shallow_copy, tone, tts_files, write_wav,
)

import ssamba
from ssamba.audio import AudioLoadError, features, load_audio, resample
from ssamba.audio.stats import AUDIOSET
from ssamba.inference import Predictor
from ssamba.inference.encoding import encode_any_length, time_columns
from ssamba.models.classifier import AudioClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def official():
    return ssamba.load(FINETUNE, labels=LABELS)


@pytest.fixture(scope="module")
def shallow(tmp_path_factory):
    """The official fine-tuned weights cut to 2 blocks (one forward/backward pair): cheap for long inputs."""
    return ssamba.load(shallow_copy(FINETUNE, tmp_path_factory.mktemp("m") / "shallow", labels=LABELS))


def test_load_gives_models_with_predict_and_embed(official):
    assert type(official) is AudioClassifier and callable(official.predict) and callable(official.embed)
    assert official.config.labels == LABELS and not official.training


def test_predict_on_speech_commands_files_matches_the_official_evaluation_path(official):
    files = tts_files("yes", 1)  # one full-depth pass; other words go through the shallow model elsewhere
    preds = official.predict(files, top_k=3)
    assert [p.source for p in preds] == [str(f) for f in files]
    for f, pred in zip(files, preds):
        waveform, sr = load_audio(f)
        x = features(waveform, sr, 256, AUDIOSET.mean, AUDIOSET.std)  # 1-s clip padded to the trained 256 frames
        with torch.no_grad():
            expected = official(x[None]).softmax(-1)[0]
        torch.testing.assert_close(torch.from_numpy(pred.scores), expected, atol=1e-6, rtol=0)
        order = expected.argsort(descending=True)[:3].tolist()
        assert [lab for lab, _ in pred.top] == [LABELS[i] for i in order]
        assert [s for _, s in pred.top] == pytest.approx(expected[order].tolist(), abs=1e-6)
        assert pred.duration_s == pytest.approx(1.0) and pred.ok


def test_single_path_returns_one_result_and_raises_on_error(shallow, tmp_path):
    pred = shallow.predict(tts_files("up", 1)[0], top_k=2)
    assert len(pred.top) == 2 and pred.top[0][1] >= pred.top[1][1]
    assert sum(pred.scores) == pytest.approx(1.0, abs=1e-5)  # softmax over the 10 classes
    with pytest.raises(AudioLoadError, match="missing.wav: file not found"):
        shallow.predict(tmp_path / "missing.wav")


@pytest.mark.parametrize("seconds", [0.1, 1.0, 30.0])
def test_tones_of_any_length_give_frames_timestamps_and_labels(shallow, seconds):
    emb = shallow.embed(tone(seconds))
    hop_ms = 10 * shallow.config.encoder.tstride  # 100 ms columns
    n = emb.frames.shape[0]
    assert emb.frames.shape == (n, 192) and emb.clip.shape == (192,) and emb.frames.dtype == np.float32
    # one frame per column centred inside the audio (87.5 ms is the first column's centre), at least one
    assert n == max(1, int((seconds * 1000 - 87.5) // hop_ms) + 1)
    np.testing.assert_allclose(emb.timestamps_ms, 87.5 + hop_ms * np.arange(n))
    np.testing.assert_allclose(emb.clip, emb.frames.mean(0), rtol=1e-5, atol=1e-6)
    assert np.isfinite(emb.frames).all()
    pred = shallow.predict(tone(seconds), top_k=10, per_second=True)
    assert len(pred.top) == 10 and len(pred.per_second) == max(1, round(seconds))
    assert all(len(sec) == 10 for sec in pred.per_second)


@pytest.fixture(scope="module")
def shallow16(tmp_path_factory):
    """2 blocks of the official pretrained weights with a seeded 10-class head, patch stride 16 (160 ms columns)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("m") / "shallow16"
    return ssamba.load(shallow_copy(PRETRAIN, out, label_dim=10, labels=LABELS))


def test_ten_minutes_run_windowed_with_per_second_labels(shallow16):
    audio = tone(600.0, freq=300.0)
    # one pass: 12 windows of 60 s overlapping by 10 s give labels, per-second labels and the embeddings
    pred = shallow16.predict(audio, per_second=True, top_k=1, batch_size=4, embeddings=True)
    emb = pred.embedding
    assert emb.frames.shape == (3750, 192) and emb.timestamps_ms[-1] == pytest.approx(599927.5)
    assert np.all(np.diff(emb.timestamps_ms) == 160.0) and np.isfinite(emb.frames).all()
    np.testing.assert_allclose(emb.clip, emb.frames.mean(0), rtol=1e-5, atol=1e-6)
    assert len(pred.per_second) == 600 and pred.duration_s == pytest.approx(600.0)
    # a steady tone: the per-second labels agree with the clip label almost everywhere
    agree = np.mean([sec[0][0] == pred.top[0][0] for sec in pred.per_second])
    assert agree > 0.9, agree


def test_predict_can_return_the_embeddings_of_the_same_pass(shallow):
    clips = [tone(1.0), tone(3.0, freq=900.0)]
    both = shallow.predict(clips, embeddings=True)
    for pred, emb in zip(both, shallow.embed(clips)):
        assert np.array_equal(pred.embedding.frames, emb.frames) and np.array_equal(pred.embedding.clip, emb.clip)
    assert shallow.predict(clips[0]).embedding is None


def test_a_clip_is_the_same_alone_or_batched_with_longer_clips(shallow):
    short, longer, longest = tone(1.0), tone(2.0, freq=900.0, seed=1), tone(30.0, freq=200.0, seed=2)
    alone = shallow.embed(short)
    batched = shallow.embed([short, longer, longest])
    assert np.array_equal(alone.frames, batched[0].frames) or \
        np.abs(alone.frames - batched[0].frames).max() < 1e-6
    assert np.abs(alone.clip - batched[0].clip).max() < 1e-6
    assert np.abs(shallow.predict(short).scores - shallow.predict([short, longest])[0].scores).max() < 1e-6
    # what the guarantee prevents: running the 1-s clip padded to the 30-s clip's length changes its frames a lot
    x = features(torch.from_numpy(short), 16000, 3006, AUDIOSET.mean, AUDIOSET.std)
    with torch.no_grad():
        padded = time_columns(encode_any_length(shallow.encoder, x[None])[-1], 1, 12)[0, :alone.frames.shape[0]]
    assert np.abs(padded.numpy() - alone.frames).max() > 1e-2


def test_waveforms_at_any_rate_and_paths_agree(shallow, tmp_path):
    audio16 = tone(1.5, sr=16000)
    from_path = shallow.embed(write_wav(tmp_path / "t.wav", audio16))
    from_numpy = shallow.embed(audio16)
    from_torch = shallow.embed(torch.from_numpy(audio16))
    assert np.array_equal(from_path.clip, from_numpy.clip) and np.array_equal(from_numpy.clip, from_torch.clip)
    audio48 = tone(1.5, sr=48000)
    at48 = shallow.embed(audio48, sample_rate=48000)
    resampled = shallow.embed(resample(torch.from_numpy(audio48), 48000, 16000).numpy())
    np.testing.assert_allclose(at48.frames, resampled.frames, atol=1e-6)
    # a (batch, samples) array is a batch
    pair = shallow.embed(np.stack([audio16, audio16[::-1].copy()]))  # equally long: one batch of two
    assert len(pair) == 2 and np.abs(pair[0].clip - from_numpy.clip).max() < 1e-6
    assert not np.allclose(pair[0].clip, pair[1].clip)


def test_bad_inputs_are_reported_per_input_and_the_rest_finish(shallow, tmp_path):
    good = tts_files("go", 2)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk" * 20)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    nan = write_wav(tmp_path / "nan.wav", np.full(8000, np.nan, dtype=np.float32))
    short = write_wav(tmp_path / "short.wav", tone(0.01))
    inputs = [good[0], corrupt, empty, tmp_path / "missing.wav", nan, short, np.full(4000, np.inf), good[1]]
    preds = shallow.predict(inputs)
    assert [p.ok for p in preds] == [True, False, False, False, False, False, False, True]
    errors = [p.error for p in preds if not p.ok]
    assert "corrupt.wav: not a readable audio file" in errors[0]
    assert "empty.wav: empty file" in errors[1]
    assert "missing.wav: file not found" in errors[2]
    assert "nan.wav: 8000 of 8000 samples are NaN" in errors[3]
    assert "short.wav: too short: 160 samples" in errors[4]
    assert errors[5].startswith("<array 6>: 4000 of 4000 samples are NaN or infinite")
    assert preds[7].top == shallow.predict(good[1]).top
    with pytest.raises(AudioLoadError, match="corrupt.wav"):
        shallow.embed([good[0], corrupt], on_error="raise")


def test_multichannel_and_malformed_arrays_are_refused_clearly(shallow):
    [stereo] = shallow.embed([np.zeros((2, 16000), np.float32)])
    assert "shape (2, 16000)" in stereo.error and "reduce channels" in stereo.error
    with pytest.raises(ValueError, match=r"\(samples,\) or \(batch, samples\)"):
        shallow.embed(np.zeros((1, 2, 16000), np.float32))
    with pytest.raises(ValueError, match="sample_rate must be a positive whole number"):
        shallow.embed(tone(1.0), sample_rate=0)
    with pytest.raises(TypeError, match="expected a path or a numpy/torch waveform"):
        shallow.embed([3.5])


def test_channels_last_arrays_and_byte_order(shallow):
    stereo = np.stack([tone(1.0), tone(1.0)], axis=1)  # (samples, channels), as soundfile.read returns
    with pytest.raises(ValueError, match=r"shape \(16000, 2\) is read as \(batch, samples\).*x.mean\(1\)"):
        shallow.embed(stereo)
    native = tone(1.0).astype(np.float32)
    swapped = native.astype(native.dtype.newbyteorder(">"))  # big-endian samples, e.g. from an AIFF reader
    np.testing.assert_array_equal(shallow.embed(swapped).clip, shallow.embed(native).clip)


def test_non_finite_outputs_are_errors_not_scores(shallow):
    loud, fine = np.full(16000, 1e30, np.float32) * np.sign(tone(1.0)), tone(1.0)
    preds = shallow.predict([loud, fine])
    assert not preds[0].ok and "the model's output is not finite (peak amplitude 1e+30" in preds[0].error
    assert preds[1].ok and np.isfinite(preds[1].scores).all()
    with pytest.raises(ValueError, match="positive std"):
        Predictor(shallow, stats=(-4.0, 0.0))


def test_pretraining_models_embed_but_do_not_predict():
    model = ssamba.load(PRETRAIN)
    emb = model.embed(tone(0.5))
    assert emb.clip.shape == (192,) and emb.frames.shape == (3, 192)  # 160 ms columns centred before 500 ms
    np.testing.assert_allclose(emb.timestamps_ms, [87.5, 247.5, 407.5])
    with pytest.raises(TypeError, match="pretraining model without a classification head"):
        model.predict(tone(0.5))


def test_predictor_options(shallow):
    predictor = Predictor(shallow, stats="speechcommands", batch_size=2)
    a = predictor.embed(tone(1.0))
    b = Predictor(shallow, stats=(-6.845978, 5.5654526)).embed(tone(1.0))
    c = Predictor(shallow).embed(tone(1.0))  # AudioSet statistics by default
    assert np.array_equal(a.clip, b.clip) and not np.allclose(a.clip, c.clip)
    sig = shallow.predict(tone(1.0), activation="sigmoid", top_k=10)
    logits = shallow.predict(tone(1.0), activation="none", top_k=10)
    assert dict(sig.top) == pytest.approx({k: 1 / (1 + np.exp(-v)) for k, v in logits.top}, abs=1e-6)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        Predictor(shallow, batch_size=0)


def test_stereo_files_follow_the_mono_option(shallow, tmp_path):
    """A stereo file's embedding is its first channel's by default and the channel mean with ``mono="mean"``."""
    import soundfile as sf

    left, right = tone(1.0, freq=440.0), tone(1.0, freq=1330.0, seed=1)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    sf.write(tmp_path / "left.wav", left, 16000, subtype="FLOAT")
    sf.write(tmp_path / "mean.wav", (left + right) / 2, 16000, subtype="FLOAT")
    first = shallow.embed(str(tmp_path / "stereo.wav"))
    mean = shallow.embed(str(tmp_path / "stereo.wav"), mono="mean")
    assert np.allclose(first.clip, shallow.embed(str(tmp_path / "left.wav")).clip, atol=1e-5)
    assert np.allclose(mean.clip, shallow.embed(str(tmp_path / "mean.wav")).clip, atol=1e-5)
    assert not np.allclose(first.clip, mean.clip, atol=1e-3)


def test_bf16_precision_runs_the_encoder_under_autocast_close_to_fp32(shallow, monkeypatch):
    """precision="bf16": one bf16 autocast region per encode call (the weights are cast once for its clips); the
    scores and embeddings come back float32, close to the fp32 ones, the same top label."""
    from ssamba.inference import engine

    states = []
    original = engine.encode_any_length
    monkeypatch.setattr(engine, "encode_any_length", lambda *a, **k: states.append(
        (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))) or original(*a, **k))
    files = tts_files("yes", 2) + tts_files("no", 1)
    fp32 = shallow.predict(files, top_k=3)
    assert states and all(not on for on, _ in states)
    states.clear()
    bf16 = shallow.predict(files, top_k=3, precision="bf16")
    assert states and all(on and dtype == torch.bfloat16 for on, dtype in states)
    for a, b in zip(fp32, bf16):
        assert b.ok and b.scores.dtype == np.float32 and b.top[0][0] == a.top[0][0]
        np.testing.assert_allclose(b.scores, a.scores, atol=5e-3)
    e32, e16 = shallow.embed(files[0]), shallow.embed(files[0], precision="bf16")
    assert e16.clip.dtype == np.float32
    assert np.abs(e16.clip - e32.clip).max() <= 1e-2 * np.abs(e32.clip).max()
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        shallow.predictor(precision="fp16")


def test_predict_with_bf16_matmul_weights_or_inside_a_callers_autocast(shallow):
    """The README's other bf16 routes: a model whose Linear weights were cast once (cast_matmul_weights) predicts
    with precision="bf16" (and says so without it), and predict inside the caller's own autocast region computes
    its features in float32 as always."""
    import copy

    from ssamba.models.precision import cast_matmul_weights

    files = tts_files("yes", 1) + tts_files("no", 1)
    fp32, bf16 = shallow.predict(files, top_k=3), shallow.predict(files, top_k=3, precision="bf16")
    cast = cast_matmul_weights(copy.deepcopy(shallow))
    for a, b in zip(bf16, cast.predict(files, top_k=3, precision="bf16")):
        assert b.ok and b.top[0][0] == a.top[0][0]
        np.testing.assert_allclose(b.scores, a.scores, atol=2e-2)
    with pytest.raises(ValueError, match="matmul weights are bfloat16 .* precision='bf16'"):
        cast.predict(files[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = shallow.predict(files, top_k=3)
    for a, b in zip(fp32, inside):
        assert b.ok and b.top[0][0] == a.top[0][0]
        np.testing.assert_allclose(b.scores, a.scores, atol=2e-2)  # only the head ran under the caller's bf16


def test_folders_hold_the_same_audio_for_prepare_and_for_predict(tmp_path):
    """One list of audio suffixes: a NIST SPHERE file (TIMIT's format) that `ssamba prepare` finds is also found by
    predict/embed in a folder (it once read as "folder holds no audio files")."""
    import soundfile as sf

    from ssamba.data.corpora._common import find_audio
    from ssamba.inference.inputs import audio_files

    sf.write(str(tmp_path / "a.sph"), np.zeros(1600, dtype=np.float32), 16000, format="NIST", subtype="PCM_16")
    sf.write(str(tmp_path / "b.flac"), np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    expected = [tmp_path / "a.sph", tmp_path / "b.flac"]
    assert audio_files([tmp_path]) == expected and sorted(find_audio(tmp_path)) == expected


def test_clips_up_to_the_trained_length_see_exactly_the_training_input():
    """The official 128-frame Speech Commands model (stride 10: 12 columns, the last 2 frames outside every patch):
    predict() once ran it at 136 frames, stretching the position embedding to 13 columns, and its scores moved by
    up to 0.022 from the model's own output on the official input."""
    from ssamba.audio.features import features
    from ssamba.audio.stats import SPEECHCOMMANDS

    model = ssamba.load(PRETRAIN, label_dim=10, input_tdim=128, fstride=10, tstride=10)
    head = torch.load(OFFICIAL / "official_tiny_finetune_t128_head.pt", map_location="cpu", weights_only=True)
    model.head.load_state_dict({k.removeprefix("module.mlp_head."): v for k, v in head.items()})
    model.eval()
    clips = [tts_files(word, 1)[0] for word in ("yes", "stop")]
    x = torch.stack([features(*load_audio(c), 128, SPEECHCOMMANDS.mean, SPEECHCOMMANDS.std) for c in clips])
    with torch.no_grad():
        expected = model(x).softmax(-1).numpy()
    got = np.stack([p.scores for p in model.predict(clips, stats="speechcommands", top_k=1)])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert [len(model.embed(c).frames) for c in clips] == [10, 10]  # of the 12 columns, those centred in 1 s


def test_integer_and_half_waveforms_predict_like_their_float_samples(shallow):
    """PCM integers are scaled like a loaded file (int16 / 32768, 8-bit unsigned around 128), half precision is
    promoted: each predicts exactly what its float32 samples predict."""
    x = tone(1.0, freq=440.0, seed=3)
    pcm16 = np.round(x * 32767).astype(np.int16)
    pcm8 = np.round(x * 127 + 128).astype(np.uint8)
    half = torch.from_numpy(x).half()
    cases = [(pcm16, pcm16.astype(np.float32) / 32768), (pcm8, (pcm8.astype(np.float32) - 128) / 128),
             (half, half.float().numpy())]
    for given, as_float in cases:
        got, expected = shallow.predict(given, top_k=1), shallow.predict(as_float, top_k=1)
        assert got.error is None and np.isfinite(got.scores).all()
        np.testing.assert_array_equal(got.scores, expected.scores)
