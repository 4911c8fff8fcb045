"""ssamba: self-supervised audio representation learning with bidirectional Mamba state-space models.

A faithful re-implementation of SSAMBA (Shams et al., 2024) and its transformer baseline SSAST, able to load the
official checkpoints and reproduce their outputs.
"""
from __future__ import annotations

from ssamba import cpu_memory

cpu_memory.configure()  # before torch allocates anything: huge pages and heap reuse for long inputs (see there)

__version__ = "0.1.0"

from ssamba.inference.mixin import install as _install_inference  # noqa: E402
from ssamba.loading import load  # noqa: E402

_install_inference()  # models get predict/embed (the methods live in ssamba.inference, see its mixin module)

__all__ = ["load", "__version__"]
