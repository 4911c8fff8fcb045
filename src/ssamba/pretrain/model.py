"""The pretraining model: an encoder, a learned mask embedding, and the two masked-patch prediction heads."""
from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from ssamba.models.base import AudioModel
from ssamba.models.classifier import AudioClassifier
from ssamba.models.config import ModelConfig
from ssamba.models.heads import prediction_head
from ssamba.models.patches import unfold_patches
from ssamba.pretrain.masking import sample_mask
from ssamba.pretrain.objectives import gather_rows, infonce, joint_loss, masked_mse

#: masked patches per clip when none is given (the official forward default and validation setting)
DEFAULT_MASK_SIZE = 400

log = logging.getLogger(__name__)


class MaskedPatchModel(AudioModel):
    """SSAMBA/SSAST pretraining stage: ``pretraining_loss`` and ``encode``; ``to_classifier`` to fine-tune."""

    task = "pretrain"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        enc = config.encoder
        patch_dim = enc.fshape * enc.tshape  # 256 for the official 16x16 (and 128x2) patches
        self.mask_embed = nn.Parameter(nn.init.xavier_normal_(torch.zeros(1, 1, enc.embed_dim)))
        self.mpc_head = prediction_head(enc.embed_dim, patch_dim)
        self.mpg_head = prediction_head(enc.embed_dim, patch_dim)

    @property
    def mask_kind(self) -> str:
        """Clusters of patches, or frames when a patch spans all mel bins (the official rule)."""
        enc = self.config.encoder
        return "frame" if enc.fshape == enc.input_fdim else "cluster"

    def patch_targets(self, x: Tensor) -> Tensor:
        enc = self.config.encoder
        return unfold_patches(x, enc.fshape, enc.tshape, enc.fstride, enc.tstride)

    def sample_mask(self, batch: int, mask_size: int = DEFAULT_MASK_SIZE, device=None) -> Tensor:
        return sample_mask(batch, self.encoder.grid, mask_size, self.mask_kind, device=device)

    def predict_masked(self, x: Tensor, mask_index: Tensor, head: nn.Module) -> Tensor:
        """Encode with the masked patches replaced by ``mask_embed``; predict those patches: (B, M, patch_dim)."""
        out = self.encoder(x, mask_index, self.mask_embed)
        return head(gather_rows(out, mask_index + self.num_cls_tokens))

    def pretraining_loss(self, x: Tensor, mask_index: Tensor | tuple[Tensor, Tensor] | None = None,
                         mask_size: int = DEFAULT_MASK_SIZE, single_pass: bool = False) -> dict[str, Tensor]:
        """``{"nce", "mse", "acc", "loss"}`` with ``loss = nce + 10 * mse``.

        Like the official ``pretrain_joint``, the two objectives use two forward passes with independently drawn
        masks (and drop-path masks).  A given ``mask_index`` (B, M) is used for both, a pair as the InfoNCE and
        the MSE masks; ``single_pass=True`` shares one forward pass between the heads (half the cost; not the
        official recipe).
        """
        targets = self.patch_targets(x).detach()
        if isinstance(mask_index, tuple):
            masks = list(mask_index)
        else:
            masks = [mask_index, mask_index] if mask_index is not None else [
                self.sample_mask(x.shape[0], mask_size, x.device) for _ in range(1 if single_pass else 2)]
        if single_pass:
            out = self.encoder(x, masks[0], self.mask_embed)
            rows = gather_rows(out, masks[0] + self.num_cls_tokens)
            mpc_pred, mpg_pred = self.mpc_head(rows), self.mpg_head(rows)
            mpc_mask = mpg_mask = masks[0]
        else:
            mpc_mask, mpg_mask = masks[0], masks[-1]
            mpc_pred = self.predict_masked(x, mpc_mask, self.mpc_head)
            mpg_pred = self.predict_masked(x, mpg_mask, self.mpg_head)
        nce, acc = infonce(mpc_pred, gather_rows(targets, mpc_mask))
        mse = masked_mse(mpg_pred, gather_rows(targets, mpg_mask))
        return {"nce": nce, "mse": mse, "acc": acc, "loss": joint_loss(nce, mse)}

    forward = pretraining_loss

    def to_classifier(self, label_dim: int, input_tdim: int | None = None, fstride: int | None = None,
                      tstride: int | None = None, input_fdim: int | None = None, labels: list[str] | None = None,
                      pooling: str = "mean") -> AudioClassifier:
        """The fine-tuning model for another input length/stride, exactly as the official conversion (spec §8).

        The encoder's weights carry over (the position embedding adapted to the new patch grid), the pretraining
        heads are dropped, the classification head is new, and the input normalisation the encoder was pretrained
        with (``norm_stats``) stays the model's default."""
        encoder = self.encoder.with_input_size(input_tdim, fstride, tstride, input_fdim)
        config = ModelConfig(encoder=copy.deepcopy(encoder.config), task="classify", label_dim=label_dim,
                             pooling=pooling, labels=labels, norm_stats=self.config.norm_stats)
        classifier = AudioClassifier(config)
        classifier.encoder = encoder
        log.info("pretraining model -> classifier: encoder kept (patch grid %s -> %s, position embedding adapted), "
                 "pretraining heads (mask_embed, mpc_head, mpg_head) dropped, new %d-class head",
                 self.encoder.config.grid, encoder.config.grid, label_dim)
        return classifier.to(self.mask_embed.device)
