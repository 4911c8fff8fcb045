"""Masking and the pretraining objectives."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from ssamba.models.config import ModelConfig, preset
from ssamba.pretrain import masking
from ssamba.pretrain.model import MaskedPatchModel
from ssamba.pretrain.objectives import gather_rows, infonce, masked_mse


def official_gen_maskid_patch(rng, sequence_len, mask_size, p_t_dim, cluster=3):
    """A literal transcription of the official generator (spec §7), including ``list(set(...))[:M]``."""
    mask_id = []
    cur_clus = rng.randrange(cluster) + 3
    while len(list(set(mask_id))) <= mask_size:
        start_id = rng.randrange(sequence_len)
        cur_mask = []
        for i in range(cur_clus):
            for j in range(cur_clus):
                cand = start_id + p_t_dim * i + j
                if 0 < cand < sequence_len:
                    cur_mask.append(cand)
        mask_id = mask_id + cur_mask
    return list(set(mask_id))[:mask_size]


@pytest.mark.parametrize("n,m,t_dim", [(512, 250, 64), (512, 300, 64), (512, 400, 64), (128, 48, 16), (128, 40, 16)])
def test_cluster_mask_equals_official_generator(n, m, t_dim):
    for seed in range(30):
        ours = masking.cluster_mask_ids(n, m, t_dim, random.Random(seed))
        theirs = official_gen_maskid_patch(random.Random(seed), n, m, t_dim)
        assert ours == theirs
        assert len(set(ours)) == m and 0 not in ours and max(ours) < n


def test_cluster_masks_are_clustered():
    ids = masking.cluster_mask_ids(512, 100, 64, random.Random(0))
    rows, cols = {i // 64 for i in ids}, {i % 64 for i in ids}
    assert len(rows) < 8 or len(cols) < 64  # clusters, not scattered ids
    neighbours = sum((i + 1) in ids or (i - 1) in ids for i in ids)
    assert neighbours / len(ids) > 0.9


def test_frame_mask_and_validation():
    ids = masking.frame_mask_ids(512, 100, random.Random(0))
    assert len(set(ids)) == 100 and all(0 <= i < 512 for i in ids)
    with pytest.raises(ValueError, match="mask_size"):
        masking.cluster_mask_ids(10, 9, 5, random.Random(0))
    with pytest.raises(ValueError, match="mask_size"):
        masking.frame_mask_ids(10, 11, random.Random(0))
    with pytest.raises(ValueError, match="cluster"):
        masking.sample_mask(1, (2, 5), 3, kind="blob")


def test_sample_mask_is_seeded_by_torch_and_per_sample():
    torch.manual_seed(7)
    a = masking.sample_mask(4, (8, 64), 300)
    torch.manual_seed(7)
    b = masking.sample_mask(4, (8, 64), 300)
    assert a.shape == (4, 300) and a.dtype == torch.long and torch.equal(a, b)
    assert len({tuple(row.tolist()) for row in a}) == 4


def test_infonce_equals_per_clip_official_loop():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    nce, acc = infonce(pred, target)
    total_nce, correct = 0.0, 0
    for i in range(3):
        s = target[i] @ pred[i].T
        correct += (torch.argmax(torch.softmax(s, dim=-1), dim=0) == torch.arange(7)).sum().item()
        total_nce += torch.diag(F.log_softmax(s, dim=-1)).sum().item()
    assert nce.item() == pytest.approx(-total_nce / 21, rel=1e-6)
    assert acc.item() == pytest.approx(correct / 21)


def test_objectives_are_float32_under_bf16_autocast():
    """Under bf16 autocast the scores were a bf16 matmul: the loss moved in steps of 1/64 and its gradients by ~5%
    (the official code runs in float32). Both objectives now equal their float32 values."""
    torch.manual_seed(0)
    pred = torch.randn(2, 400, 256, requires_grad=True)
    target = torch.randn(2, 400, 256) * 0.5
    nce, acc = infonce(pred, target)
    (grad,) = torch.autograd.grad(nce, pred)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nce_amp, acc_amp = infonce(pred, target)
        mse_amp = masked_mse(pred, target)
    (grad_amp,) = torch.autograd.grad(nce_amp, pred)
    assert nce_amp.dtype == torch.float32 and mse_amp.dtype == torch.float32
    torch.testing.assert_close(nce_amp, nce, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_amp, grad, rtol=1e-5, atol=1e-9)
    assert acc_amp == acc and mse_amp.item() == pytest.approx(F.mse_loss(pred, target).item(), rel=1e-6)


def test_masked_tokens_are_replaced_before_position_embedding():
    torch.manual_seed(0)
    model = MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny", depth=2, input_tdim=64)))
    x = torch.randn(2, 64, 128)
    mask = torch.tensor([[1, 5, 9], [0, 2, 31]])
    with torch.no_grad():
        plain = model.encoder.tokens(x)
        masked = model.encoder.tokens(x, mask, model.mask_embed)
    pos = model.encoder.pos_embed[0]
    for b in range(2):
        for n in range(32):
            if n in mask[b]:
                assert torch.allclose(masked[b, 1 + n], model.mask_embed[0, 0] + pos[1 + n])
            else:
                assert torch.equal(masked[b, 1 + n], plain[b, 1 + n])
    assert torch.equal(masked[:, 0], plain[:, 0])
    assert torch.equal(gather_rows(plain, mask + 1)[1, 2], plain[1, 32])


def test_pretraining_loss_draws_masks_and_learns(monkeypatch):
    torch.manual_seed(0)
    model = MaskedPatchModel(ModelConfig(encoder=preset("ssamba", "tiny", depth=2, input_tdim=64,
                                                        drop_path_rate=0.0)))
    drawn = []
    original = model.sample_mask
    monkeypatch.setattr(model, "sample_mask", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    x = torch.randn(2, 64, 128)
    out = model.pretraining_loss(x, mask_size=10)
    assert len(drawn) == 2 and not torch.equal(drawn[0], drawn[1])  # official: independent masks per objective
    assert set(out) == {"nce", "mse", "acc", "loss"}
    assert out["loss"].item() == pytest.approx(out["nce"].item() + 10 * out["mse"].item(), rel=1e-6)
    model.pretraining_loss(x, mask_size=10, single_pass=True)
    assert len(drawn) == 3
    # a few optimisation steps on a fixed batch and mask lower the joint loss
    mask = drawn[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = model.pretraining_loss(x, mask)["loss"].item()
    for _ in range(10):
        opt.zero_grad()
        model.pretraining_loss(x, mask)["loss"].backward()
        opt.step()
    assert model.pretraining_loss(x, mask)["loss"].item() < 0.8 * first


def test_ssast_frame_variant_uses_frame_masking():
    model = MaskedPatchModel(ModelConfig(encoder=preset("ssast", "tiny", depth=1, input_tdim=64, fshape=128,
                                                        tshape=2, fstride=128, tstride=2)))
    assert model.mask_kind == "frame" and model.encoder.grid == (1, 32)
    torch.manual_seed(0)
    out = model.pretraining_loss(torch.randn(2, 64, 128), mask_size=8)
    assert torch.isfinite(out["loss"]) and model.mpc_head[2].out_features == 256
