"""The selective scan behind one function, with interchangeable backends.

``selective_scan`` has the signature and tensor layout of mamba_ssm's ``selective_scan_fn`` so that every backend is
a drop-in for the others.  The backend is chosen, in order of precedence, by the ``backend=`` argument (what a
model's ``EncoderConfig.scan_backend`` passes), by ``set_backend()`` (process-wide), by the ``SSAMBA_SCAN_BACKEND``
environment variable, and otherwise automatically ("auto"): the fastest registered backend that supports the
input's device (and its d_state: the cpu kernels take up to 256).

Backends: ``triton`` (CUDA, whenever Triton is importable -- every CUDA build of torch ships it -- so "auto" picks
it on GPUs; ``triton_ops``), ``mamba_ssm`` (CUDA, when installed; "auto" prefers triton), ``cpu`` (the C++
kernels of ``scan/csrc``, compiled on first use; if they cannot be built, a warning says so once and "auto" falls
back to the reference), ``reference`` (pure PyTorch, the oracle).  With the ``cpu`` backend the Mamba mixer also runs fused (``BiMambaMixer._forward_fused``).
Environment: ``SSAMBA_EXT_DIR`` (where the kernels are cached), ``SSAMBA_SCAN_ISA`` (force avx512bf16/avx512/avx2/generic).
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ssamba.models.scan import cpu as _cpu
from ssamba.models.scan import triton_ops as _triton
from ssamba.models.scan.reference import selective_scan_reference

logger = logging.getLogger(__name__)

ENV_VAR = "SSAMBA_SCAN_BACKEND"
ScanFn = Callable[..., Tensor]


@dataclass(frozen=True)
class ScanBackend:
    """A scan implementation. ``supports(u)`` says whether "auto" may pick it for this input (device,
    availability); ``runs(u)``, whether it can run it when selected by name (default: the same)."""

    name: str
    fn: ScanFn
    supports: Callable[[Tensor], bool]
    priority: int  # higher wins under "auto"
    runs: Callable[[Tensor], bool] | None = None
    reverses: bool = False  # scans backwards in time natively (``fn(..., reverse=True)``), without flipped copies
    max_state: int | None = None  # largest d_state it takes (None: any)

    def can_run(self, u: Tensor) -> bool:
        return (self.runs or self.supports)(u)


_BACKENDS: dict[str, ScanBackend] = {}
_selected: str | None = None


def register_backend(name: str, fn: ScanFn, supports: Callable[[Tensor], bool], priority: int,
                     runs: Callable[[Tensor], bool] | None = None, reverses: bool = False,
                     max_state: int | None = None) -> None:
    """Add a backend (see ``ScanBackend``). The registry is kept in descending priority, so that "auto" takes the
    first backend that supports the input (a plain loop, which torch.compile traces without graph breaks)."""
    _BACKENDS[name] = ScanBackend(name, fn, supports, priority, runs, reverses, max_state)
    ranked = sorted(_BACKENDS.values(), key=lambda b: -b.priority)
    _BACKENDS.clear()
    _BACKENDS.update((b.name, b) for b in ranked)


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def set_backend(name: str | None) -> None:
    """Select a backend for the whole process (``None`` or "auto" restores automatic choice)."""
    global _selected
    if name is not None and name != "auto" and name not in _BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; choose from auto, {', '.join(available_backends())}")
    _selected = None if name == "auto" else name


def get_backend(u: Tensor, name: str | None = None, d_state: int | None = None) -> ScanBackend:
    """Resolve which backend runs a scan on ``u`` (with ``d_state`` states, where known)."""
    name = name or _selected or os.environ.get(ENV_VAR) or "auto"

    def fits(backend: ScanBackend) -> bool:
        return backend.max_state is None or d_state is None or d_state <= backend.max_state

    if name == "auto":
        for backend in _BACKENDS.values():  # highest priority first
            if backend.supports(u) and fits(backend):
                return backend
        raise RuntimeError(f"no scan backend supports a {u.dtype} tensor on {u.device.type}")
    if name not in _BACKENDS:
        raise ValueError(
            f"unknown scan backend {name!r} (from argument, set_backend or ${ENV_VAR}); "
            f"choose from auto, {', '.join(available_backends())}"
        )
    backend = _BACKENDS[name]
    if not fits(backend):
        raise ValueError(f"scan backend {name!r} takes d_state <= {backend.max_state}, got {d_state} "
                         "(the automatic choice runs such models on another backend)")
    if not backend.can_run(u):
        raise RuntimeError(f"scan backend {name!r} cannot run a {u.dtype} tensor on {u.device.type} here "
                           "(cpu: float32/bfloat16/float16 CPU tensors with its kernels built; triton and mamba_ssm: "
                           "CUDA tensors with the package installed)")
    return backend


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    backend: str | None = None,
    reverse: bool = False,
) -> Tensor:
    """Mamba-1 selective scan (spec §5). u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).

    ``reverse=True`` scans from the last step to the first (outputs stay at their time index): the same as
    flipping every time axis, scanning and flipping back, which is what happens for backends that cannot do it
    natively."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    impl = get_backend(u, backend, d_state=A.shape[-1])
    if reverse and impl.reverses:
        return impl.fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=True)
    if reverse:
        flip = lambda t: None if t is None else t.flip(-1)  # noqa: E731
        return impl.fn(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias, delta_softplus).flip(-1)
    return impl.fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    n = A.shape[-1] if A.dim() == 2 else -1
    expected = {
        "delta": (delta, (batch, dim, length)),
        "A": (A, (dim, n)),
        "B": (B, (batch, n, length)),
        "C": (C, (batch, n, length)),
        "D": (D, (dim,)),
        "z": (z, (batch, dim, length)),
        "delta_bias": (delta_bias, (dim,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {name} has shape {tuple(tensor.shape)}, expected {shape}")


def _warn_broken(package: str, error: str) -> None:
    """An optional GPU kernel package that is installed but fails to import (or is too old) is said, never
    silently skipped: the scan would fall back to a far slower backend."""
    warnings.warn(f"ssamba: {package} is installed but fails to import or is not usable ({error}); its scan "
                  "backend is skipped, and CUDA tensors fall back to a slower one", RuntimeWarning, stacklevel=4)


@functools.lru_cache(maxsize=None)
def _mamba_ssm_fn() -> ScanFn | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # not installed, or a broken CUDA build raising at import
        if not (isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "mamba_ssm"):
            _warn_broken("mamba_ssm", f"{type(exc).__name__}: {exc}")
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=None)
def _triton_broken_said() -> None:
    if _triton.IMPORT_ERROR is not None:
        _warn_broken("triton", _triton.IMPORT_ERROR)


def _triton_supports(u: Tensor) -> bool:
    if not u.is_cuda:
        return False
    if not _triton.available():
        _triton_broken_said()
        return False
    return True


def _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    fn = _mamba_ssm_fn()
    return fn(u, delta, A, B.contiguous(), C.contiguous(), D, z, delta_bias, delta_softplus)


register_backend(
    "reference",
    lambda u, delta, A, B, C, D, z, delta_bias, delta_softplus: selective_scan_reference(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus
    ),
    supports=lambda u: True,
    priority=0,
)
def _cpu_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    from ssamba.models.scan.ops import selective_scan_cpu

    return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _triton_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=False):
    return _triton.selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=reverse)


register_backend("cpu", _cpu_scan, supports=_cpu.supports, priority=50, max_state=_cpu.MAX_STATE)
# Under "auto" on CUDA: triton (nothing to build) ahead of mamba_ssm, which "auto" takes only without Triton.
register_backend(
    "mamba_ssm",
    _mamba_ssm_scan,
    supports=lambda u: u.is_cuda and _mamba_ssm_fn() is not None,
    priority=80,
)
# CPU tensors run only by name and only in Triton's interpreter (the test suite's way to check the kernels).
register_backend("triton", _triton_scan, supports=_triton_supports, priority=100,
                 runs=_triton.supports, reverses=True)

__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "register_backend",
    "set_backend",
    "get_backend",
    "available_backends",
    "ENV_VAR",
]
