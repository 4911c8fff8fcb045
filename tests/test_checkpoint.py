"""Our checkpoint format (round trip) and official import: prefixes, variants, and clear errors."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from conftest import OFFICIAL

import ssamba
from ssamba.cli import main as cli_main
from ssamba.models.checkpoint import CheckpointError, read_official
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig, preset
from ssamba.pretrain.model import MaskedPatchModel


def small(arch: str, **kw):
    return preset(arch, "tiny", depth=2 if arch == "ssast" else 4, input_tdim=64, **kw)


@pytest.mark.parametrize("arch", ["ssamba", "ssast"])
def test_round_trip_is_bit_identical(tmp_path, arch):
    torch.manual_seed(0)
    x = torch.randn(2, 64, 128)
    pre = MaskedPatchModel(ModelConfig(encoder=small(arch))).eval()
    clf = AudioClassifier(ModelConfig(encoder=small(arch, tstride=10, fstride=10), task="classify", label_dim=3,
                                      labels=["a", "b", "c"])).eval()
    mask = pre.sample_mask(2, 5)
    for model, fn in [(pre, lambda m: m.pretraining_loss(x, mask)["loss"]), (clf, lambda m: m(x))]:
        model.save_pretrained(tmp_path / arch)
        assert sorted(p.name for p in (tmp_path / arch).iterdir()) == ["config.json", "model.safetensors"]
        for loaded in (type(model).from_pretrained(tmp_path / arch), ssamba.load(tmp_path / arch)):
            assert type(loaded) is type(model) and loaded.config == model.config
            with torch.no_grad():
                assert torch.equal(fn(loaded), fn(model))


def test_official_file_with_or_without_module_prefix(tmp_path):
    state = read_official(OFFICIAL / "official_tiny_finetune_t256.pth")
    torch.save({k.removeprefix("module."): v for k, v in state.items()}, tmp_path / "plain.pth")
    torch.save({"state_dict": state}, tmp_path / "nested.pth")
    x = torch.randn(1, 256, 128)
    reference = ssamba.load(OFFICIAL / "official_tiny_finetune_t256.pth")
    with torch.no_grad():
        for name in ("plain.pth", "nested.pth"):
            assert torch.equal(ssamba.load(tmp_path / name)(x), reference(x))


def test_rmsnorm_checkpoint_is_detected(tmp_path):
    state = read_official(OFFICIAL / "official_tiny_finetune_t256.pth")
    rms = {k: v for k, v in state.items() if not (k.endswith("norm.bias") or k.endswith("norm_f.bias"))}
    torch.save(rms, tmp_path / "rms.pth")
    model = ssamba.load(tmp_path / "rms.pth")
    assert model.config.encoder.norm == "rmsnorm"
    x = torch.randn(1, 256, 128)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    mixed = dict(rms)
    mixed["module.v.layers.3.norm.bias"] = state["module.v.layers.3.norm.bias"]
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="neither LayerNorm nor RMSNorm"):
        ssamba.load(tmp_path / "mixed.pth")


def test_unsupported_and_mismatched_official_files(tmp_path):
    state = read_official(OFFICIAL / "official_tiny_pretrain.pth")
    v1 = {k: v for k, v in state.items() if not re.search(r"(_b\.|_b_log$|\.D_b$)", k)}
    assert len(v1) == len(state) - 24 * 7
    torch.save(v1, tmp_path / "v1.pth")
    with pytest.raises(CheckpointError, match="bimamba v2"):
        ssamba.load(tmp_path / "v1.pth")

    missing = dict(state)
    del missing["module.v.layers.5.mixer.dt_proj_b.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing keys \(1\): encoder.layers.5.mixer.dt_proj_b.bias") as err:
        ssamba.load(tmp_path / "missing.pth")
    assert "missing.pth" in str(err.value)

    extra = dict(state)
    extra["module.v.layers.0.mixer.gamma"] = torch.zeros(3)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): encoder.layers.0.mixer.gamma"):
        ssamba.load(tmp_path / "extra.pth")

    # damaged files: every error names the file and says what is wrong (some were a bare KeyError, or blamed the
    # norms or the depth for a missing block)
    for name, edit, error in [
        ("epoch.pth", lambda d: d.update({"module.epoch": torch.tensor(3)}), "unexpected key 'epoch'"),
        ("no_fdim.pth", lambda d: d.pop("module.p_input_fdim"), "no p_input_fdim: not a complete official"),
        ("no_xproj.pth", lambda d: d.pop("module.v.layers.0.mixer.x_proj.weight"), "no v.layers.0.mixer.x_proj"),
        ("no_22.pth", lambda d: [d.pop(k) for k in list(d) if k.startswith("module.v.layers.22.")],
         r"v.layers.22.\* missing \(1 of the 24 blocks\)"),
        ("no_23.pth", lambda d: [d.pop(k) for k in list(d) if k.startswith("module.v.layers.23.")],
         r"SSAMBA runs its blocks in forward/backward pairs: depth must be even, got 23 \(v.layers.0..22 found\)"),
    ]:
        damaged = dict(state)
        edit(damaged)
        torch.save(damaged, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{tmp_path / name}: {error}"):
            ssamba.load(tmp_path / name)

    alien = {"module.foo.weight": torch.zeros(1)}
    torch.save(alien, tmp_path / "alien.pth")
    with pytest.raises(CheckpointError, match="not an official SSAMBA or SSAST"):
        ssamba.load(tmp_path / "alien.pth")


def test_an_ambiguous_fine_tuning_geometry_is_said(tmp_path, caplog):
    """A state dict holds the patch count, not the stride: 600 patches are 12 x 50 (stride 10, 512 frames: the
    ESC-50 recipe) or 8 x 75 (stride 16, 1200 frames). The official stride 10 is taken, and the other reading said;
    frame-based patches (one frequency row) say that their time stride is a guess."""
    from ssamba.models.checkpoint import export_official_state

    for name, enc, said in [
        ("esc50.pth", preset("ssamba", "tiny", depth=2, input_tdim=512, fstride=10, tstride=10),
         "also fit a 128x1200 input at stride 16x16"),
        ("frames.pth", preset("ssast", "tiny", depth=1, input_tdim=64, fshape=128, tshape=2, fstride=128,
                              tstride=1), "the time stride cannot be read"),
    ]:
        cfg = ModelConfig(encoder=enc, task="classify", label_dim=3)
        torch.save(export_official_state(AudioClassifier(cfg).state_dict(), cfg), tmp_path / name)
        caplog.clear()
        loaded = ssamba.load(tmp_path / name)
        assert said in caplog.text and f"{tmp_path / name}: inferred fine-tuning geometry" in caplog.text
        caplog.clear()
        given = ssamba.load(tmp_path / name, input_tdim=enc.input_tdim, fstride=enc.fstride, tstride=enc.tstride)
        assert given.config.encoder == enc and "inferred" not in caplog.text
    assert loaded.config.encoder.tstride == 10  # the guess said above: frame-based SSAST fine-tuned at stride 1


def test_the_scan_backend_is_not_saved_with_the_model(tmp_path, caplog):
    """A model trained with model.overrides.scan_backend=mamba_ssm (a GPU) must run on a CPU once saved."""
    x = torch.randn(1, 64, 128)
    model = AudioClassifier(ModelConfig(encoder=small("ssamba", scan_backend="mamba_ssm"), task="classify",
                                        label_dim=3)).eval()
    out = model.save_pretrained(tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["encoder"]["scan_backend"] is None
    cfg = json.loads((out / "config.json").read_text())
    cfg["encoder"]["scan_backend"] = "mamba_ssm"  # as an older version wrote it
    (out / "config.json").write_text(json.dumps(cfg))
    loaded = ssamba.load(out)
    assert "saved with scan_backend='mamba_ssm'" in caplog.text and loaded.config.encoder.scan_backend is None
    reference = AudioClassifier(ModelConfig(encoder=small("ssamba"), task="classify", label_dim=3)).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_corrupt_and_truncated_files_fail_clearly(tmp_path):
    data = (OFFICIAL / "official_tiny_pretrain.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint" * 100)
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("truncated.pth", "garbage.pth", "empty.pth"):
        with pytest.raises(CheckpointError, match=name):
            ssamba.load(tmp_path / name)
    with pytest.raises(CheckpointError, match="no such file"):
        ssamba.load(tmp_path / "absent.pth")

    model = MaskedPatchModel(ModelConfig(encoder=small("ssamba")))
    out = model.save_pretrained(tmp_path / "ours")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ssamba.load(out)
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        ssamba.load(tmp_path / "nocfg")
    model.save_pretrained(tmp_path / "bad")
    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    cfg["encoder"]["depth"] = 6
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing keys"):
        ssamba.load(tmp_path / "bad")


@pytest.mark.parametrize("edit, error", [
    (lambda cfg: cfg.pop("encoder"), r"lacks 'encoder'"),
    (lambda cfg: cfg.pop("task"), r"lacks 'task'"),
    (lambda cfg: cfg["encoder"].update(embed_dim="x"), r"invalid model config: embed_dim must be a positive integer"),
    (lambda cfg: cfg["encoder"].update(bogus=1), r"invalid model config: unknown encoder config keys: \['bogus'\]"),
    (lambda cfg: cfg.update(encoder="tiny"), r"invalid model config: encoder must be an encoder config"),
    (lambda cfg: cfg.update(task="zzz"), r"invalid model config: task must be"),
])
def test_a_damaged_config_json_is_refused_naming_the_file(tmp_path, edit, error):
    """A hand-edited config fails on load, naming config.json, instead of as a shape mismatch or AttributeError."""
    out = MaskedPatchModel(ModelConfig(encoder=small("ssamba"))).save_pretrained(tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    edit(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=re.escape(str(out / "config.json")) + ": " + error):
        ssamba.load(out)
    (out / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object, got list"):
        ssamba.load(out)


def test_load_options_are_validated():
    with pytest.raises(TypeError, match="unexpected keyword argument .label_dims."):
        ssamba.load(OFFICIAL / "official_tiny_pretrain.pth", label_dims=3)
    with pytest.raises(TypeError, match="pass label_dim"):
        ssamba.load(OFFICIAL / "official_tiny_pretrain.pth", input_tdim=128)
    with pytest.raises(TypeError, match="already a fine-tuning model"):
        ssamba.load(OFFICIAL / "official_tiny_finetune_t256.pth", label_dim=3)
    with pytest.raises(ValueError, match="fstride must be a positive integer, got 0"):
        ssamba.load(OFFICIAL / "official_tiny_finetune_t256.pth", fstride=0)
    with pytest.raises(ValueError, match="tstride must be a positive integer, got -5"):
        ssamba.load(OFFICIAL / "official_tiny_pretrain.pth", label_dim=3, tstride=-5)
    with pytest.raises(CheckpointError, match="holds 300 patches, which the given 128x512 input with stride 10x10"):
        ssamba.load(OFFICIAL / "official_tiny_finetune_t256.pth", input_tdim=512, fstride=10, tstride=10)


@pytest.mark.parametrize("field, value, error", [
    ("depth", "two", "depth must be a positive integer, got 'two'"), ("fstride", 0, "fstride must be a positive"),
    ("drop_path_rate", "high", "drop_path_rate must be a number in"), ("num_cls_tokens", 3, "num_cls_tokens must"),
    ("dt_rank", 0, "dt_rank must be a positive integer"), ("norm_eps", 0.0, "norm_eps must be a positive number"),
])
def test_encoder_config_values_are_checked_by_name(field, value, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        preset("ssamba", "tiny", input_tdim=64, **{field: value})


def test_cli_convert(tmp_path, official_inputs, official_outputs):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(10)))
    assert cli_main(["convert", str(OFFICIAL / "official_tiny_finetune_t256.pth"), str(tmp_path / "ft"),
                     "--labels", str(labels)]) == 0
    model = ssamba.load(tmp_path / "ft")
    assert model.config.labels[3] == "class3"
    with torch.no_grad():
        out = model(official_inputs["x_ft_t256"])
    assert (out - official_outputs["ft_t256_avgtok"]).abs().max() < 1e-5
    assert cli_main(["convert", str(OFFICIAL / "official_tiny_pretrain.pth"), str(tmp_path / "pre")]) == 0
    assert isinstance(ssamba.load(tmp_path / "pre"), MaskedPatchModel)
    assert cli_main(["convert", str(tmp_path / "absent.pth"), str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("arch,task", [("ssast", "pretrain"), ("ssast", "classify"), ("ssamba", "classify")])
def test_export_to_official_layout_and_import_back(tmp_path, arch, task):
    from ssamba.models.checkpoint import export_official_state

    torch.manual_seed(0)
    enc = preset(arch, "tiny", depth=2, input_tdim=128, **({"fstride": 10, "tstride": 10} if task == "classify"
                                                          else {}))
    cfg = ModelConfig(encoder=enc, task=task, label_dim=7 if task == "classify" else 0)
    model = (MaskedPatchModel if task == "pretrain" else AudioClassifier)(cfg).eval()
    official = export_official_state(model.state_dict(), cfg)
    assert all(k.startswith("module.") for k in official)
    assert ("module.v.head_dist.weight" in official) == (arch == "ssast")
    torch.save(official, tmp_path / "official.pth")
    # a state dict does not record the input length: the fine-tuning geometry is declared (or inferred, see keys test)
    loaded = ssamba.load(tmp_path / "official.pth", **({"input_tdim": 128} if task == "classify" else {}))
    assert loaded.config.encoder == enc
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        if task == "pretrain":
            mask = model.sample_mask(2, 20)
            assert torch.equal(loaded.pretraining_loss(x, mask)["loss"], model.pretraining_loss(x, mask)["loss"])
        else:
            assert torch.equal(loaded(x), model(x))


def test_a_saved_pretraining_folder_converts_like_an_official_file(tmp_path):
    """ssamba.load(our pretraining folder, label_dim=...) builds the fine-tuning model by the same conversion as an
    official .pth (the encoder's weights kept, the geometry changed)."""
    torch.manual_seed(0)
    pre = MaskedPatchModel(ModelConfig(encoder=small("ssamba")))
    folder = pre.save_pretrained(tmp_path / "pre")
    loaded = ssamba.load(folder, label_dim=5, input_tdim=100, fstride=10, tstride=10, labels=list("abcde"))
    expected = pre.to_classifier(5, input_tdim=100, fstride=10, tstride=10, labels=list("abcde"))
    assert isinstance(loaded, AudioClassifier) and loaded.config.labels == list("abcde")
    assert loaded.config.encoder.input_tdim == 100 and loaded.config.encoder.tstride == 10
    x = torch.randn(1, 100, 128)
    expected.head.load_state_dict(loaded.head.state_dict())  # the new head is random: compare the encoders
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), expected.eval().encode(x), atol=0, rtol=0)
        assert loaded(x).shape == (1, 5)
    with pytest.raises(TypeError, match="already fixes its input size"):
        ssamba.load(loaded.save_pretrained(tmp_path / "ft"), input_tdim=200)


def test_a_pretraining_model_converts_with_its_normalisation_and_says_what_changed(caplog):
    """The classifier built from a pretraining model once lost norm_stats: predict then normalised with AudioSet's
    statistics, silently. The conversion is also logged (heads dropped, grid adapted)."""
    torch.manual_seed(0)
    pretrained = MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny", depth=2, input_tdim=64),
                                              norm_stats=[-3.0, 2.0]))
    with caplog.at_level(logging.INFO, logger="ssamba.pretrain.model"):
        classifier = pretrained.to_classifier(5, input_tdim=128, fstride=10, tstride=10)
    assert classifier.config.norm_stats == [-3.0, 2.0]
    assert "pretraining heads (mask_embed, mpc_head, mpg_head) dropped" in caplog.text
    assert "(8, 4) -> (12, 12)" in caplog.text


def test_a_training_checkpoint_as_a_model_is_told_apart_from_a_damaged_file(tmp_path):
    """checkpoints/last.pt holds optimiser and RNG states, which a safe load refuses: the error once said "corrupt
    or truncated?"; it now says what the file is for and what to load instead. A damaged file is still damaged."""
    import random

    state = {"model": {"w": torch.zeros(2)}, "rng": [{"numpy": np.random.get_state(), "python": random.getstate()}]}
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last.pt: holds Python objects besides tensors.*--resume.*best/"):
        read_official(tmp_path / "last.pt")
    (tmp_path / "torn.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="torn.pt: cannot read as a PyTorch checkpoint"):
        read_official(tmp_path / "torn.pt")
