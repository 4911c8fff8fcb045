"""Encoders, mixer initialisation, drop path, pooling and position-embedding adaptation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssamba.models import build_encoder
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset
from ssamba.models.heads import pool_cls, pool_mean, pool_official_1sec, pool_per_second
from ssamba.models.patches import adapt_position_embedding
from ssamba.models.ssamba import SSAMBAEncoder
from ssamba.models.ssamba import drop_path_rates
from ssamba.pretrain.model import MaskedPatchModel


def test_official_initialisation():
    torch.manual_seed(0)
    model = MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny", depth=4, input_tdim=64)))
    e, r = 384, 12
    for layer in model.encoder.layers:
        mix = layer.mixer
        expected_a = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(e, 16)
        assert torch.equal(mix.A_log, expected_a) and torch.equal(mix.A_b_log, expected_a)
        assert torch.equal(mix.D, torch.ones(e)) and torch.equal(mix.D_b, torch.ones(e))
        assert torch.equal(mix.dt_proj_b.bias, torch.zeros(e))  # quirk Q14
        dt = F.softplus(mix.dt_proj.bias)
        assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6 and dt.min() < 2e-3 and dt.max() > 0.05
        assert mix.dt_proj.weight.abs().max() <= r ** -0.5
        assert mix.out_proj.weight.abs().max() <= 1 / math.sqrt(e) / math.sqrt(4) + 1e-7
        assert mix.out_proj.weight.abs().max() > 0.8 / math.sqrt(e) / math.sqrt(4)
        assert mix.conv1d.weight.abs().max() <= 0.5 and mix.conv1d_b.bias.abs().max() <= 0.5
        assert mix.in_proj.bias is None and mix.x_proj.bias is None and mix.out_proj.bias is None
        assert torch.equal(layer.norm.weight, torch.ones(192)) and torch.equal(layer.norm.bias, torch.zeros(192))
    for p in (model.encoder.cls_token, model.encoder.pos_embed):
        assert p.abs().max() <= 2 and 0.015 < p.std() < 0.025
    assert 0.5 / math.sqrt(192) < model.mask_embed.std() < 1.5 / math.sqrt(192)


def test_drop_path_schedule_matches_vim():
    rates = drop_path_rates(0.1, 24)
    assert rates[0] == rates[1] == 0.0
    assert rates[2] == pytest.approx(0.1 / 23) and rates[23] == pytest.approx(0.09565, abs=1e-5)
    enc = build_encoder(preset("ssamba", "tiny", input_tdim=32))
    assert [layer.drop_path.rate for layer in enc.layers] == pytest.approx(rates)
    assert enc.drop_path.rate == 0.1  # quirk Q4: the final drop path is not scheduled


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    enc = build_encoder(preset("ssamba", "tiny", depth=4, input_tdim=48, drop_path_rate=0.5))
    x = torch.randn(4, 48, 128)
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(x), enc(x))
        enc.train()
        assert not torch.equal(enc(x), enc(x))


def test_shapes_and_input_errors():
    enc = build_encoder(preset("ssamba", "tiny", depth=2, input_tdim=100, fstride=10, tstride=10))
    assert enc.grid == (12, 9)
    with torch.no_grad():
        assert enc(torch.randn(2, 100, 128)).shape == (2, 1 + 108, 192)
        assert enc(torch.randn(1, 105, 128)).shape == (1, 109, 192)  # same grid: accepted
    with pytest.raises(ValueError, match="mel bins"):
        enc(torch.randn(1, 100, 64))
    with pytest.raises(ValueError, match="frames"):
        enc(torch.randn(1, 200, 128))
    with pytest.raises(ValueError, match=r"\(B, frames, mel\)"):
        enc(torch.randn(100, 128))


def test_ssast_attention_variants_agree_and_cls_pooling():
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=preset("ssast", "tiny", depth=2, input_tdim=64), task="classify", label_dim=5)
    model = AudioClassifier(cfg).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        sdpa = model.encode(x)
        model.encoder.set_attention("naive")
        naive = model.encode(x)
        assert (sdpa - naive).abs().max() < 1e-5
        assert sdpa.shape == (2, 2 + 32, 192)
        tokens = model.encode(x)
        assert torch.allclose(pool_cls(tokens, 2), (tokens[:, 0] + tokens[:, 1]) / 2)
        assert torch.allclose(pool_mean(tokens, 2), tokens[:, 2:].mean(1))
        assert torch.allclose(model(x, pooling="cls"), model.head((tokens[:, 0] + tokens[:, 1]) / 2))


def test_ssast_naive_attention_is_literal_softmax():
    torch.manual_seed(1)
    enc = build_encoder(preset("ssast", "tiny", depth=1, input_tdim=32, attention="naive"))
    attn = enc.blocks[0].attn
    x = torch.randn(2, 5, 192)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = lambda t: t.reshape(2, 5, 3, 64).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 8.0, dim=-1)
    expected = attn.proj((weights @ heads(v)).transpose(1, 2).reshape(2, 5, 192))
    assert torch.allclose(attn(x), expected, atol=1e-6)


def test_per_second_pooling_is_time_aligned():
    # grid 2 x 10, stride 16 with 16-frame patches: column t is centred on frame 16t + 8
    f_dim, t_dim = 2, 10
    column_value = torch.arange(t_dim, dtype=torch.float32)
    tokens = torch.cat([torch.full((1, 1, 1), -100.0), column_value.repeat(f_dim).reshape(1, -1, 1)], dim=1)
    pooled = pool_per_second(tokens, 1, (f_dim, t_dim), tshape=16, tstride=16, segment_frames=100)
    # centres 8, 24, 40, 56, 72, 88 | 104, 120, 136, 152 -> seconds 0 and 1
    assert torch.allclose(pooled.squeeze(-1), torch.tensor([[2.5, 7.5]]))
    fixed = pool_per_second(tokens, 1, (f_dim, t_dim), 16, 16, segment_frames=100, num_segments=3)
    assert torch.allclose(fixed.squeeze(-1), torch.tensor([[2.5, 7.5, 9.0]]))  # empty second: nearest column
    one = pool_per_second(tokens, 1, (f_dim, t_dim), 16, 16, segment_frames=100, num_segments=1)
    assert torch.allclose(one.squeeze(-1), torch.tensor([[2.5]]))  # columns centred past the last second: left out
    # the 60-s task: 6144 frames, 384 columns; the 9 centred past 6000 frames see only padding, second 59 its 6
    sixty = torch.arange(384, dtype=torch.float32).reshape(1, -1, 1)
    seconds = pool_per_second(sixty, 0, (1, 384), 16, 16, segment_frames=100, num_segments=60)
    assert float(seconds[0, 59, 0]) == sum(range(369, 375)) / 6
    # the official pooling runs over frequency-major tokens including cls (quirk Q11)
    official = pool_official_1sec(tokens, num_segments=3)
    assert torch.allclose(official.squeeze(-1), tokens[0, :21, 0].reshape(3, 7).mean(1)[None])


def test_classifier_per_second_output():
    cfg = ModelConfig(encoder=preset("ssamba", "tiny", depth=2, input_tdim=400), task="classify", label_dim=3)
    model = AudioClassifier(cfg).eval()
    with torch.no_grad():
        assert model.per_second(torch.randn(2, 400, 128)).shape == (2, 4, 3)


def _grid(pos, n_cls, f, t):
    return pos[:, n_cls:].reshape(1, f, t, -1)


@pytest.mark.parametrize("n_cls", [1, 2])
def test_position_embedding_cut_and_interpolation(n_cls):
    torch.manual_seed(0)
    pos = torch.randn(1, n_cls + 8 * 64, 6)
    # ESC-50: time cut [7:57], frequency 8 -> 12 by bilinear interpolation
    new = adapt_position_embedding(pos, n_cls, (8, 64), (12, 50))
    assert torch.equal(new[:, :n_cls], pos[:, :n_cls])
    cut = _grid(pos, n_cls, 8, 64)[:, :, 7:57].permute(0, 3, 1, 2)
    expected = F.interpolate(cut, size=(12, 50), mode="bilinear").permute(0, 2, 3, 1).reshape(1, 600, 6)
    assert torch.equal(new[:, n_cls:], expected)
    # Q6 done right: a frequency cut takes f_dim rows from the centre (the official code would take t_dim rows)
    small = adapt_position_embedding(pos, n_cls, (8, 64), (4, 10))
    expected = _grid(pos, n_cls, 8, 64)[:, 2:6, 27:37].reshape(1, 40, 6)
    assert torch.equal(small[:, n_cls:], expected)
    # Q5 done right: a pretraining grid with other than 8 rows keeps its rows in the time step
    pos6 = torch.randn(1, n_cls + 6 * 20, 6)
    wide = adapt_position_embedding(pos6, n_cls, (6, 20), (6, 30))
    g = _grid(pos6, n_cls, 6, 20).permute(0, 3, 1, 2)
    expected = F.interpolate(g, size=(6, 30), mode="bilinear").permute(0, 2, 3, 1).reshape(1, 180, 6)
    assert torch.allclose(wide[:, n_cls:], expected, atol=1e-6)


def test_ssast_pretrain_to_classifier_keeps_both_cls_positions():
    torch.manual_seed(0)
    pre = MaskedPatchModel(ModelConfig(encoder=preset("ssast", "tiny", depth=2, input_tdim=256)))
    clf = pre.to_classifier(label_dim=4, input_tdim=128, fstride=10, tstride=10)
    assert clf.config.encoder.grid == (12, 12) and clf.encoder.pos_embed.shape == (1, 2 + 144, 192)
    assert torch.equal(clf.encoder.pos_embed[:, :2], pre.encoder.pos_embed[:, :2])
    assert torch.equal(clf.encoder.patch_embed.proj.weight, pre.encoder.patch_embed.proj.weight)
    assert clf.encoder.patch_embed.proj.stride == (10, 10)
    with torch.no_grad():
        assert clf(torch.randn(2, 128, 128)).shape == (2, 4)


@pytest.mark.parametrize("arch,units", [("ssamba", 3), ("ssast", 2)])
def test_hidden_states_per_layer(arch, units):
    torch.manual_seed(0)
    enc = build_encoder(preset(arch, "tiny", depth=2 * units if arch == "ssamba" else units, input_tdim=32)).eval()
    x = torch.randn(2, 32, 128)
    with torch.no_grad():
        states = enc.hidden_states(x)
        assert len(states) == units + 1 and all(s.shape == (2, enc.num_cls_tokens + 16, 192) for s in states)
        assert torch.equal(states[-1], enc(x))
        final_norm = enc.norm_f if arch == "ssamba" else enc.norm
        once = final_norm(states[-2])  # eval: the last layer's stream is the pre-norm residual
        assert torch.allclose(final_norm(once) if arch == "ssamba" else once, states[-1], atol=1e-5)


def test_with_input_size_keeps_the_train_eval_mode():
    enc = build_encoder(preset("ssamba", "tiny", depth=2, input_tdim=64, drop_path_rate=0.5))
    assert not enc.eval().with_input_size(input_tdim=128).training  # no stray drop path at inference
    assert enc.train().with_input_size(input_tdim=128).training


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_ssamba_inference_path_equals_the_autograd_path_bit_for_bit(backend, monkeypatch):
    """Without autograd, each pair forms its shared residual once and frees its inputs early (memory); the numbers
    must be exactly those of the path that keeps both blocks' residuals (used whenever gradients are on).
    With the cpu backend inference normally runs the fused trunk (one op per pair for the adds and LayerNorms,
    tests/test_trunk_fused.py), whose norms round differently: close here, and bit for bit without it."""
    torch.manual_seed(0)
    enc = build_encoder(preset("ssamba", "tiny", input_tdim=64, depth=4, drop_path_rate=0.1,
                               scan_backend=backend)).eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        fast, fast_states = enc(x), enc.hidden_states(x)
    slow, slow_states = enc(x).detach(), [s.detach() for s in enc.hidden_states(x)]
    if backend == "cpu":
        assert ((fast - slow).abs().max() / slow.abs().max()).item() < 1e-5
        monkeypatch.setattr(SSAMBAEncoder, "_fused_add_norms", lambda self, tokens: None)
        with torch.no_grad():
            fast, fast_states = enc(x), enc.hidden_states(x)
    assert torch.equal(fast, slow)
    assert len(fast_states) == len(slow_states) and all(torch.equal(a, b) for a, b in zip(fast_states, slow_states))
