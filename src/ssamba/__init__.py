"""ssamba: self-supervised audio representation learning with bidirectional Mamba state-space models.

A faithful re-implementation of SSAMBA (Shams et al., 2024) and its transformer baseline SSAST, able to load the
official checkpoints and reproduce their outputs.
"""
from __future__ import annotations

__version__ = "0.1.0"

from ssamba.loading import load  # noqa: E402

__all__ = ["load", "__version__"]
