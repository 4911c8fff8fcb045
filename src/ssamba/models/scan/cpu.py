"""Build and load the C++ CPU kernels (``csrc/``) on first use.

The extension is compiled once with ``torch.utils.cpp_extension.load`` into a directory keyed by a hash of the
sources and flags, so an edited kernel is rebuilt and an unchanged one is loaded from the cache.  The cache root is
``$SSAMBA_EXT_DIR`` if set (handy for CI: compile once per run), else torch's extension directory.

When the build fails (no compiler, no ninja, ...) the library warns once and the scan backend registry falls back
to the pure-PyTorch reference scan; that is never silent.  ``SSAMBA_SCAN_ISA`` (auto, avx512bf16, avx512, avx2,
generic) forces an instruction set, e.g. to test the fallbacks on a machine that has AVX-512.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
EXT_DIR_VAR = "SSAMBA_EXT_DIR"
ISA_VAR = "SSAMBA_SCAN_ISA"
_X86 = platform.machine().lower() in ("x86_64", "amd64")
# -O3 only: no -ffast-math (it would let the compiler rewrite the exp range reduction and NaN handling).
# Tuples: torch's loader appends its own flags to the lists it is given, which changed the cache key (_fingerprint)
# after the first load in a process.
CFLAGS = ("-O3", "-fopenmp", "-std=c++17") + (("-DSSAMBA_X86",) if _X86 else ())
LDFLAGS = ("-fopenmp",)


#: loading a cached build takes well under a second; longer means torch's loader recompiled it
REBUILD_SAID_S = 10.0


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled or loaded."""


def sources() -> list[Path]:
    isas = ("avx512bf16", "avx512", "avx2", "generic") if _X86 else ("generic",)
    return [CSRC / "ops.cpp", CSRC / "mixer.cpp", CSRC / "amx_linear.cpp"] + [CSRC / f"isa_{isa}.cpp" for isa in isas]


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".cpp", ".h"):
            digest.update(path.name.encode() + path.read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode() + torch.__version__.encode())
    # the build's ninja file holds the sources' absolute paths: two checkouts sharing one folder would rebuild
    # (minutes) each time the other one had loaded it
    digest.update(str(CSRC.resolve()).encode())
    return digest.hexdigest()[:12]


def build_dir() -> Path:
    root = os.environ.get(EXT_DIR_VAR)
    if root:
        base = Path(root)
    else:
        from torch.utils.cpp_extension import get_default_build_root

        base = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return base / f"ssamba_cpu_{_fingerprint()}"


def _registered() -> bool:
    """Whether this process already loaded the operators (a second library would abort on re-registration)."""
    try:
        torch.ops.ssamba_cpu.isa
    except (AttributeError, RuntimeError):
        return False
    return True


@contextlib.contextmanager
def _build_lock(directory: Path):
    """Hold an OS lock on ``directory`` for a build, and clear the lock file of a build that never finished.

    torch's extension loader guards a build with a plain ``lock`` file and waits for it to disappear; a build that
    was killed (Ctrl-C, a timeout) leaves the file, and every later process then waits forever.  ``flock`` locks
    are released by the OS when their holder dies, so while this one is held no other ssamba process is building
    here and a ``lock`` file can only be such a leftover."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock file alone
        yield
        return
    with open(directory / ".ssamba-build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        leftover = directory / "lock"
        if leftover.exists():
            logger.warning("ssamba: removing %s, left by a CPU kernel build that did not finish", leftover)
            leftover.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build() -> None:
    """Compile (or load from the cache) and register the ``torch.ops.ssamba_cpu`` operators."""
    from torch.utils.cpp_extension import load

    if _registered():
        return
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name = "ssamba_cpu"
    with _build_lock(directory):
        cached = (directory / f"{name}.so").exists()
        if cached:
            logger.debug("loading the cached CPU scan kernels from %s", directory)
        else:
            logger.warning("ssamba: compiling the CPU selective-scan kernels (once; a few minutes on 2 cores) into "
                           "%s", directory)
        start = time.perf_counter()
        load(name=name, sources=[str(p) for p in sources()], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
             build_directory=str(directory), is_python_module=False, verbose=False)
    elapsed = time.perf_counter() - start
    if not cached:
        logger.warning("ssamba: CPU kernels built in %.0f s", elapsed)
    elif elapsed > REBUILD_SAID_S:  # torch's loader rebuilt a cached library: never a silent wait of minutes
        logger.warning("ssamba: CPU kernels in %s rebuilt (%.0f s): their build files were out of date", directory,
                       elapsed)


@functools.lru_cache(maxsize=None)
def _load() -> object | None:
    """The ``torch.ops.ssamba_cpu`` namespace once built and registered, None (after one warning) if not."""
    try:
        _build()
        isa = os.environ.get(ISA_VAR, "auto")
        torch.ops.ssamba_cpu.set_isa(isa)
    except Exception as exc:  # compiler missing, build error, unsupported ISA requested, ...
        warnings.warn(
            f"ssamba: the CPU selective-scan kernels are unavailable ({type(exc).__name__}: {exc}); "
            "falling back to the pure-PyTorch reference scan (SSAMBA-tiny about 8x slower at 22k tokens, more on "
            "short inputs).",
            RuntimeWarning,
            stacklevel=3,
        )
        logger.debug("CPU kernel build failed", exc_info=exc)
        return None
    from ssamba.models.scan import ops  # registers autograd and fake implementations

    ops.register()
    logger.info("ssamba: CPU scan kernels ready (instruction set %s)", torch.ops.ssamba_cpu.isa())
    return torch.ops.ssamba_cpu


def _constant_under_compile(fn: Callable[[], bool]) -> Callable[[], bool]:
    """What ``torch.compiler.assume_constant_result`` does (torch.compile calls ``fn`` eagerly instead of tracing
    the build), without importing ``torch._dynamo``, which costs ~2 s on every ``import ssamba`` (and fails with a
    broken Triton installed); a test pins that this is the mark torch sets."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@_constant_under_compile
def available() -> bool:
    """True when the kernels are built and loaded (builds them on the first call; warns once on failure)."""
    return _load() is not None


def isa() -> str:
    """Instruction set the kernels run with ("avx512bf16", "avx512", "avx2" or "generic")."""
    if not available():
        raise KernelBuildError("the CPU kernels are not available")
    return torch.ops.ssamba_cpu.isa()


def set_isa(name: str) -> str:
    """Force an instruction set ("auto" restores the best one); returns the one in use."""
    if not available():
        raise KernelBuildError("the CPU kernels are not available")
    return torch.ops.ssamba_cpu.set_isa(name)


AMX_VAR = "SSAMBA_AMX"  # "0": bf16 inference matmuls through oneDNN even where AMX is available (read per call)


def amx_available() -> bool:
    """Whether the fused inference mixer runs its bf16 matmuls on AMX tiles (``csrc/amx_linear.cpp``) now: the kernels
    are built, the CPU has AMX-BF16, the OS grants it and ``SSAMBA_AMX`` is not "0" (the matmuls then go through
    ``at::mm``, i.e. oneDNN, as ``F.linear`` would).  The C++ side's own decision, asked rather than repeated."""
    return available() and torch.ops.ssamba_cpu.amx_available()


#: the kernels' limits (csrc/args.h kMaxState, kMaxConv; a test pins them): larger models scan on another backend
MAX_STATE = 256
MAX_CONV = 8


def supports(t: torch.Tensor) -> bool:
    """Whether the CPU backend can run a scan on ``t``: CPU tensor, float32/bf16/fp16, kernels built."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16, torch.float16) and available()
