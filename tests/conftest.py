"""Shared test helpers: the project's shared data folder sits beside the repository (``../shared``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter; the switch is read when Triton is first imported, so it
# is set here, before any test (or torch.compile) imports it.  "auto" never picks the triton backend on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "fixtures" / "official"


def triton_and_reference_mixers(device: str, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A small mixer (d_model 4, d_state 4, d_inner 8) on the triton scan backend and its twin with the same weights
    on the reference backend, the oracle."""
    from ssamba.models.mamba import BiMambaMixer

    torch.manual_seed(seed)
    mixer = BiMambaMixer(d_model=4, d_state=4, expand=2, scan_backend="triton").to(device)
    reference = BiMambaMixer(d_model=4, d_state=4, expand=2, scan_backend="reference").to(device)
    reference.load_state_dict(mixer.state_dict())
    return mixer, reference


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error ||a - e|| / ||e|| in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="session")
def official_inputs() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL / "inputs.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def official_outputs() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL / "outputs.pt", map_location="cpu", weights_only=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not OFFICIAL.is_dir():
        raise pytest.UsageError(f"shared fixtures not found at {OFFICIAL}: the repository must sit beside ../shared")


@pytest.fixture
def threads():
    """Set torch's thread count for one test (CI has 2 cores; 2 threads also run where there is 1)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
