"""Parity with the golden outputs of the official SSAMBA code (../shared/fixtures/official, spec §13)."""
from __future__ import annotations

import pytest
import torch
from conftest import OFFICIAL

import ssamba
from ssamba.models.classifier import AudioClassifier
from ssamba.pretrain.model import MaskedPatchModel

ATOL = 1e-5
RTOL_LOSS = 1e-5


@pytest.fixture(scope="module")
def pretrain_model() -> MaskedPatchModel:
    model = ssamba.load(OFFICIAL / "official_tiny_pretrain.pth")
    assert isinstance(model, MaskedPatchModel) and not model.training
    return model


def close(actual, expected, atol=ATOL):
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def test_pretrain_checkpoint_config(pretrain_model):
    enc = pretrain_model.config.encoder
    assert (enc.arch, enc.size, enc.embed_dim, enc.depth, enc.norm) == ("ssamba", "tiny", 192, 24, "layernorm")
    assert (enc.input_fdim, enc.input_tdim, enc.grid) == (128, 256, (8, 16))


@torch.no_grad()
def test_pretrain_encoder_and_heads(pretrain_model, official_inputs, official_outputs):
    x, mask = official_inputs["x_pretrain"], official_inputs["mask_index"]
    enc = pretrain_model.encoder
    tokens = enc.tokens(x, mask, pretrain_model.mask_embed)
    close(enc.norm_f(enc.residual_stream(tokens)), official_outputs["pretrain_encoder_out_single_norm"])
    close(enc(x, mask, pretrain_model.mask_embed), official_outputs["pretrain_encoder_out"])
    close(pretrain_model.patch_targets(x), official_outputs["patch_targets"], atol=0)
    close(pretrain_model.predict_masked(x, mask, pretrain_model.mpc_head), official_outputs["mpc_pred"])
    close(pretrain_model.predict_masked(x, mask, pretrain_model.mpg_head), official_outputs["mpg_pred"])


@torch.no_grad()
@pytest.mark.parametrize("single_pass", [False, True])
def test_pretrain_losses(pretrain_model, official_inputs, official_outputs, single_pass):
    losses = pretrain_model.pretraining_loss(official_inputs["x_pretrain"], official_inputs["mask_index"],
                                             single_pass=single_pass)
    for ours, theirs in [("nce", "mpc_nce"), ("mse", "mpg_mse"), ("acc", "mpc_acc"), ("loss", "joint_loss")]:
        expected = official_outputs[theirs]
        assert abs(losses[ours].item() - expected.item()) <= RTOL_LOSS * abs(expected.item()), ours


@torch.no_grad()
def test_finetune_t256_by_conversion_and_direct_load(pretrain_model, official_inputs, official_outputs):
    x = official_inputs["x_ft_t256"]
    converted = ssamba.load(OFFICIAL / "official_tiny_pretrain.pth", label_dim=10, input_tdim=256,
                            fstride=10, tstride=10)
    direct = ssamba.load(OFFICIAL / "official_tiny_finetune_t256.pth")
    assert isinstance(direct, AudioClassifier) and direct.config.encoder.grid == (12, 25)
    # the conversion reproduces the official fine-tuning model's encoder exactly (its head is the stored one)
    direct_state, converted_state = direct.state_dict(), converted.state_dict()
    for key, value in converted_state.items():
        if key.startswith("encoder."):
            assert torch.equal(value, direct_state[key]), key
    close(direct.encode(x), official_outputs["ft_t256_encoder_out"])
    close(direct(x), official_outputs["ft_t256_avgtok"])
    close(direct(x, pooling="cls"), official_outputs["ft_t256_cls"])


@torch.no_grad()
def test_finetune_t128_centre_cut(pretrain_model, official_inputs, official_outputs):
    x = official_inputs["x_ft_t128"]
    model = pretrain_model.to_classifier(label_dim=10, input_tdim=128, fstride=10, tstride=10)
    assert model.config.encoder.grid == (12, 12)
    head = torch.load(OFFICIAL / "official_tiny_finetune_t128_head.pt", map_location="cpu", weights_only=True)
    model.head.load_state_dict({k.removeprefix("module.mlp_head."): v for k, v in head.items()})
    model.eval()
    close(model.encode(x), official_outputs["ft_t128_encoder_out"])
    close(model(x), official_outputs["ft_t128_avgtok"])
    close(model(x, pooling="cls"), official_outputs["ft_t128_cls"])


def test_joint_loss_gradients_reach_every_parameter(pretrain_model, official_inputs):
    model = ssamba.load(OFFICIAL / "official_tiny_pretrain.pth")
    losses = model.pretraining_loss(official_inputs["x_pretrain"], official_inputs["mask_index"])
    losses["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    # quirk Q26: the InfoNCE is invariant to the last bias of the contrastive head
    assert model.mpc_head[2].bias.grad.abs().max() < 1e-5
    assert model.mpg_head[2].bias.grad.abs().max() > 1e-4
