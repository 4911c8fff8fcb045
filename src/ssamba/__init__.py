"""ssamba: self-supervised audio representation learning with bidirectional Mamba state-space models.

A faithful re-implementation of SSAMBA (Shams et al., 2024) and its transformer baseline SSAST, able to load the
official checkpoints and reproduce their outputs.
"""
from __future__ import annotations

from ssamba import cpu_memory

cpu_memory.configure()  # before torch allocates anything: huge pages and heap reuse for long inputs (see there)

__version__ = "0.1.0"

from ssamba.loading import load  # noqa: E402

__all__ = ["load", "__version__"]
