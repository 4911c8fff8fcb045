"""The any-length strategy: run planning, windows and stitching, chunked fbank, position embeddings per length."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _inference_helpers import PRETRAIN, one_thread, shallow_copy, tone  # noqa: F401

import ssamba
from ssamba.audio import fbank
from ssamba.inference import long_audio
from ssamba.inference.encoding import aligned_frames, column_count, encode_any_length, position_embedding
from ssamba.inference.engine import ClipEncoder
from ssamba.inference.long_audio import LengthPolicy, log_mel, plan_runs
from ssamba.models.config import preset
from ssamba.models.patches import adapt_position_embedding

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = preset("ssamba", "tiny", input_tdim=1024)  # stride 16, trained on 1024 frames


@pytest.fixture(scope="module")
def shallow(tmp_path_factory):
    return ssamba.load(shallow_copy(PRETRAIN, tmp_path_factory.mktemp("m") / "s"))  # 256 frames, stride 16


def test_short_clips_pad_to_the_trained_length_and_long_ones_run_at_their_own():
    assert plan_runs(98, CFG, LengthPolicy()) == [long_audio.Run(0, 1024, 0, 0, 64)]
    assert plan_runs(98, CFG, LengthPolicy(min_frames=16)) == [long_audio.Run(0, 112, 0, 0, 7)]
    [run] = plan_runs(3000, CFG, LengthPolicy())
    assert run.frames == 3008 and run.keep_to == column_count(CFG, 3008) == 188  # no frame dropped
    assert aligned_frames(preset(tstride=10), 2998) == 3006 and aligned_frames(CFG, 3) == 16


@pytest.mark.parametrize("frames", [6001, 9999, 60000, 360000])
def test_windows_cover_every_column_once_with_bounded_length(frames):
    policy = LengthPolicy(max_frames=6000, overlap_frames=1000)
    runs = plan_runs(frames, CFG, policy)
    assert all(r.frames == 6000 and r.start % 16 == 0 and r.offset * 16 == r.start for r in runs)
    assert runs[0].keep_from == 0 and all(a.keep_to == b.keep_from for a, b in zip(runs, runs[1:]))
    assert all(r.offset <= r.keep_from < r.keep_to <= r.offset + column_count(CFG, 6000) for r in runs)
    assert 0 <= runs[-1].start + 6000 - frames < 16  # the last window ends with the audio: never mostly padding
    # kept columns sit away from the window edges wherever there is overlap
    for a, b in zip(runs, runs[1:]):
        assert a.keep_to - b.offset >= 30 and a.offset + column_count(CFG, 6000) - b.keep_from >= 30
    if frames == 360000:  # one hour: 72 windows of 60 s, never a longer run
        assert len(runs) == 72


@pytest.mark.parametrize("tstride, overlap", [(8, 0), (5, 0), (5, 1), (5, 5), (6, 0), (6, 5), (16, 0), (10, 0)])
def test_windows_tile_the_columns_whatever_the_stride_and_overlap(tstride, overlap):
    """A patch (16 frames) wider than the stride: windows that only touch as frames must not skip the columns
    between them (stride 8, no overlap once dropped every other window's worth of columns)."""
    config = preset("ssamba", "tiny", input_tdim=128, tstride=tstride)
    for frames in (801, 1000, 2999, 12345):
        runs = plan_runs(frames, config, LengthPolicy(max_frames=256, overlap_frames=overlap))
        window = runs[0].frames
        assert runs[0].keep_from == 0 and all(a.keep_to == b.keep_from for a, b in zip(runs, runs[1:]))
        assert all(r.offset <= r.keep_from < r.keep_to <= r.offset + column_count(config, window) for r in runs)
        assert runs[-1].keep_to == column_count(config, aligned_frames(config, frames))  # as one run would have
        parts = [torch.zeros(column_count(config, window), 1) for _ in runs]
        assert long_audio.stitch(parts, runs).shape[0] == runs[-1].keep_to


def test_stitch_refuses_a_plan_that_does_not_tile():
    with pytest.raises(ValueError, match="keeps columns outside"):
        long_audio.stitch([torch.zeros(10, 1)] * 2,
                          [long_audio.Run(0, 100, 0, 0, 10), long_audio.Run(96, 100, 12, 10, 20)])


def test_policy_errors():
    with pytest.raises(ValueError, match="overlap_frames"):
        LengthPolicy(max_frames=100, overlap_frames=100)
    with pytest.raises(ValueError, match="shorter than the minimum run"):
        plan_runs(5000, CFG, LengthPolicy(max_frames=512, overlap_frames=64))
    with pytest.raises(ValueError, match="min_frames"):
        LengthPolicy(min_frames=0)


def test_chunked_log_mel_equals_the_one_shot_fbank(monkeypatch):
    x = torch.from_numpy(tone(3.3, freq=1234.0))
    whole = fbank(x, 16000)
    monkeypatch.setattr(long_audio, "FBANK_CHUNK_FRAMES", 70)
    chunked = log_mel(x)
    assert chunked.shape == whole.shape == (328, 128)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_at_the_trained_length_any_length_encoding_is_the_model_itself(shallow):
    x = torch.randn(2, 256, 128)
    with torch.no_grad():
        assert torch.equal(encode_any_length(shallow.encoder, x)[-1], shallow.encode(x))
        states = encode_any_length(shallow.encoder, x, layers=True)
        expected = shallow.encoder.hidden_states(x)
    assert len(states) == len(expected) == 2 and all(torch.equal(a, b) for a, b in zip(states, expected))


def test_other_lengths_use_the_official_position_embedding_adaptation(shallow):
    enc = shallow.encoder
    for columns in (5, 40):  # centre cut, interpolation
        expected = adapt_position_embedding(enc.pos_embed.detach(), 1, enc.grid, (enc.grid[0], columns))
        assert torch.equal(position_embedding(enc, columns), expected)
        assert position_embedding(enc, columns) is position_embedding(enc, columns)  # cached
    x = torch.randn(1, 16 * 40, 128)
    adapted = enc.with_input_size(input_tdim=16 * 40).eval()
    with torch.no_grad():
        torch.testing.assert_close(encode_any_length(enc, x)[-1], adapted(x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="whole patch columns"):
        encode_any_length(enc, torch.randn(1, 100, 128))


def test_stitched_windows_equal_each_window_run_on_its_own(shallow):
    """The kept columns of a middle window are exactly that window's encoding (up to the clip-mean removal,
    which the per-frame DC removal cancels)."""
    policy = LengthPolicy(max_frames=512, overlap_frames=128)
    encoder = ClipEncoder(shallow, policy=policy, batch_size=16)
    audio = torch.from_numpy(tone(20.0, freq=700.0))
    [whole] = encoder.encode([audio])
    runs = plan_runs(log_mel(audio).shape[0], shallow.encoder.config, policy)
    assert len(runs) == 5 and whole.columns.shape[0] == 125
    run = runs[2]
    piece = audio[run.start * 160:(run.start + run.frames - 1) * 160 + 400]
    [alone] = ClipEncoder(shallow, policy=policy).encode([piece])  # exactly one window long: a single run
    kept = slice(run.keep_from - run.offset, run.keep_to - run.offset)
    torch.testing.assert_close(whole.columns[run.keep_from:run.keep_to], alone.columns[kept], atol=2e-4, rtol=0)
    np.testing.assert_allclose(whole.timestamps_ms[run.keep_from:run.keep_to] - run.start * 10,
                               alone.timestamps_ms[kept])


def test_a_clip_just_over_the_window_pools_like_one_pass(shallow):
    """The last window ends with the audio: a clip a little longer than the window gets the clip vector of a single
    pass (a last window mostly of padding once weighed its zeros into the score at the weight of its columns)."""
    audio = torch.from_numpy(tone(5.6, freq=700.0) + 0.3 * np.random.default_rng(0).standard_normal(89600))
    [windowed] = ClipEncoder(shallow, policy=LengthPolicy(max_frames=512, overlap_frames=128)).encode([audio])
    [one_pass] = ClipEncoder(shallow, policy=LengthPolicy(max_frames=1024)).encode([audio])
    assert windowed.columns.shape == one_pass.columns.shape == (35, 192)  # the window holds 32 columns
    error = (windowed.pooled - one_pass.pooled).norm() / one_pass.pooled.norm()
    assert error < 0.01, error  # 0.0034; 0.084 with a last window of 26 audio and 486 padding frames
