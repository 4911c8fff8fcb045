"""Models: the selective scan, the bidirectional Mamba mixer, the SSAMBA and SSAST encoders, heads, checkpoints."""
from __future__ import annotations

from ssamba.models.config import EncoderConfig, ModelConfig, preset
from ssamba.models.encoder import PatchEncoder
from ssamba.models.ssamba import SSAMBAEncoder
from ssamba.models.ssast import SSASTEncoder


def build_encoder(config: EncoderConfig) -> PatchEncoder:
    """The encoder class for ``config.arch``."""
    return {"ssamba": SSAMBAEncoder, "ssast": SSASTEncoder}[config.arch](config)


__all__ = ["EncoderConfig", "ModelConfig", "preset", "build_encoder", "PatchEncoder", "SSAMBAEncoder", "SSASTEncoder"]
