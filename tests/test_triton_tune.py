"""Launch shapes tuned per shape (``triton_tune`` through ``triton_ops.launch_config``): the fastest candidate is
kept and is what runs, each shape is timed once, explicit shapes are never tuned, failures fall back.

Timings in Triton's interpreter mean nothing, so the tests replace the timer with a table of made-up times; the
candidates' calls still run for real (the timer calls them), on small shapes, and their results are checked."""
from __future__ import annotations

import logging
import time

import pytest
import torch
from conftest import rel_err, triton_and_reference_mixers
from test_scan import make_inputs

from ssamba.models.scan import selective_scan, triton_ops, triton_pair, triton_tune
from ssamba.models.scan.triton_ops import CANDIDATES, TritonConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(not triton_ops.available(), reason="Triton is not installed (pip install 'ssamba[gpu]')"),
    pytest.mark.skipif(DEVICE == "cpu" and triton_ops.available() and not triton_ops.interpreted(),
                       reason="no GPU and Triton was imported without TRITON_INTERPRET=1"),
]
LOOP, SERIAL, WIDE = CANDIDATES[0], CANDIDATES[1], CANDIDATES[2]


@pytest.fixture
def tuning(monkeypatch):
    """Tuning on (also in the interpreter), no explicit shape, no decisions; ``tuning(times)`` installs a timer that
    runs each candidate's call once, records it with its output and returns ``times[candidate]`` (absent: 1 s)."""
    monkeypatch.setenv(triton_tune.AUTOTUNE_VAR, "1")
    monkeypatch.delenv(triton_ops.CONFIG_VAR, raising=False)
    triton_ops.set_config(None)
    triton_tune.clear()
    timed: list[tuple[TritonConfig, object]] = []

    def install(times: dict) -> list:
        def timer(run, candidate, device):
            timed.append((candidate, run(candidate)))
            outcome = times.get(candidate, 1.0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        monkeypatch.setattr(triton_tune, "timer", timer)
        return timed
    yield install
    triton_tune.clear()


def launched(monkeypatch) -> list[str]:
    """The algorithm of every forward kernel launched from now on ("serial" for a pair launch's)."""
    algos: list[str] = []
    real_kernel, real_pair = triton_ops._kernel, triton_pair._kernel
    monkeypatch.setattr(triton_ops, "_kernel", lambda name, algo: algos.append(algo) or real_kernel(name, algo))
    monkeypatch.setattr(triton_pair, "_kernel", lambda: algos.append("pair") or real_pair())
    return algos


def scan_inputs(length: int, grad: bool = False) -> dict:
    inputs = make_inputs(2, 3, length, 4, seed=length)
    return {k: v.to(DEVICE).requires_grad_(grad) for k, v in inputs.items()}


def test_the_fastest_candidate_runs_and_a_shape_is_timed_once(tuning, monkeypatch):
    """Every candidate's call runs (and gives the scan), the one timed fastest is remembered and is the one that
    runs the scan; a length of the same power-of-two bucket reuses it, another bucket is timed anew."""
    timed = tuning({WIDE: 0.1})
    inputs = scan_inputs(40)
    algos = launched(monkeypatch)
    with torch.no_grad():
        out = triton_ops.selective_scan_triton(**inputs, delta_softplus=True)
    assert [c for c, _ in timed] == list(CANDIDATES)
    assert all(result.shape == (2, 3, 40) for _, result in timed)  # the made-up inputs have the call's shape
    assert algos[-1] == "serial"  # the call itself, at the tuned shape
    (key, decision), = triton_tune.decisions().items()
    assert decision.choice == WIDE and decision.seconds[WIDE] == 0.1
    assert key == triton_ops.ShapeKey("inference", str(inputs["u"].device), torch.float32, 2, 3, 4, 0, 256)
    want = selective_scan(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True, backend="reference")
    assert rel_err(out, want) < 1e-5
    with torch.no_grad():
        triton_ops.selective_scan_triton(**scan_inputs(200), delta_softplus=True)  # bucket 256 again
    assert len(timed) == len(CANDIDATES)
    with torch.no_grad():
        triton_ops.selective_scan_triton(**scan_inputs(300), delta_softplus=True)  # bucket 512
    assert len(timed) == 2 * len(CANDIDATES) and len(triton_tune.decisions()) == 2
    assert triton_ops.launch_shapes_used() == f"tuned {WIDE.spec()}"  # what the benchmark reports


def test_a_large_call_is_timed_on_fewer_items(tuning, monkeypatch):
    """Made-up inputs beyond ``TUNE_ELEMENTS`` per tensor are cut along the batch (not the length, which changes
    what is fastest), so that timing does not double a large call's memory; the key keeps the call's batch."""
    assert triton_ops.tuning_batch(8, 384, 22016) == 7 and triton_ops.tuning_batch(2, 384, 22016) == 2
    timed = tuning({})
    monkeypatch.setattr(triton_ops, "TUNE_ELEMENTS", 3 * 40)  # one item of (3, 40)
    with torch.no_grad():
        triton_ops.selective_scan_triton(**scan_inputs(40), delta_softplus=True)
    assert {result.shape for _, result in timed} == {(1, 3, 40)}
    assert next(iter(triton_tune.decisions())).batch == 2


def test_training_is_tuned_apart_and_its_gradients_are_right(tuning):
    """A call that wants gradients is a "training" shape (forwards that save for the backward are timed); at the
    tuned serial shape the gradients still match the float64 reference."""
    timed = tuning({SERIAL: 0.1})
    inputs = scan_inputs(24, grad=True)
    out = triton_ops.selective_scan_triton(**inputs, delta_softplus=True)
    out.pow(2).sum().backward()
    (key, decision), = triton_tune.decisions().items()
    assert key.mode == "training" and decision.choice == SERIAL
    assert all(result.requires_grad for _, result in timed)
    ref = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    selective_scan(**ref, delta_softplus=True, backend="reference").pow(2).sum().backward()
    for name, leaf in inputs.items():
        assert rel_err(leaf.grad, ref[name].grad) < 1e-4, name


def test_explicit_or_disabled_shapes_are_not_tuned(tuning, monkeypatch):
    """``set_config``, ``$SSAMBA_TRITON_CONFIG`` and ``$SSAMBA_TRITON_AUTOTUNE=0`` all skip the timing; unset, only
    CUDA tensors are tuned."""
    timed = tuning({SERIAL: 0.1})
    algos = launched(monkeypatch)
    with torch.no_grad():
        triton_ops.set_config(TritonConfig(2, 8, 1, "chunked"))
        triton_ops.selective_scan_triton(**scan_inputs(20), delta_softplus=True)
        triton_ops.set_config(None)
        monkeypatch.setenv(triton_ops.CONFIG_VAR, "1,16,1,serial")
        triton_ops.selective_scan_triton(**scan_inputs(20), delta_softplus=True)
        monkeypatch.delenv(triton_ops.CONFIG_VAR)
        monkeypatch.setenv(triton_tune.AUTOTUNE_VAR, "0")
        triton_ops.selective_scan_triton(**scan_inputs(20), delta_softplus=True)
    assert not timed and not triton_tune.decisions()
    assert algos == ["chunked", "chunked", "chunked", "serial", "loop"]  # chunked: two state passes + the forward
    assert triton_ops.launch_shapes_used() == "default 1,512,4,loop"
    monkeypatch.delenv(triton_tune.AUTOTUNE_VAR)
    assert not triton_tune.enabled(torch.device("cpu"))
    monkeypatch.setenv(triton_ops.CONFIG_VAR, "1,16,1,serial")
    assert triton_ops.launch_shapes_used() == "set 1,16,1,serial"


def test_a_failing_candidate_is_skipped_and_all_failing_keeps_the_default(tuning, caplog):
    """A candidate whose call raises is logged and left out; when all do, the default is taken."""
    tuning({SERIAL: RuntimeError("out of shared memory"), WIDE: 0.2, CANDIDATES[3]: 0.3})
    with caplog.at_level(logging.WARNING, logger=triton_tune.__name__), torch.no_grad():
        triton_ops.selective_scan_triton(**scan_inputs(20), delta_softplus=True)
    assert "out of shared memory" in caplog.text and str(SERIAL) in caplog.text
    (decision,) = triton_tune.decisions().values()
    assert decision.choice == WIDE
    triton_tune.clear()
    tuning({c: RuntimeError("no") for c in CANDIDATES})
    with torch.no_grad():
        triton_ops.selective_scan_triton(**scan_inputs(20), delta_softplus=True)
    assert next(iter(triton_tune.decisions().values())).choice == LOOP


def test_no_memory_for_the_timing_inputs_keeps_the_default(tuning, monkeypatch, caplog):
    """A GPU too full for the made-up inputs: the default shape, said once, and the call still runs."""
    timed = tuning({SERIAL: 0.1})

    def full(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(triton_ops, "_scan_workload", full)
    inputs = scan_inputs(20)
    with caplog.at_level(logging.WARNING, logger=triton_tune.__name__), torch.no_grad():
        out = triton_ops.selective_scan_triton(**inputs, delta_softplus=True)
        triton_ops.selective_scan_triton(**inputs, delta_softplus=True)
    assert not timed and caplog.text.count("no memory to time") == 1
    assert next(iter(triton_tune.decisions().values())).choice == LOOP
    want = selective_scan(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True, backend="reference")
    assert rel_err(out, want) < 1e-5


@pytest.mark.parametrize("fastest", [SERIAL, LOOP], ids=["pair", "two-scans"])
def test_mixer_inference_takes_the_tuned_way(tuning, monkeypatch, fastest):
    """A mixer's inference times its two ways (one pair launch at each serial shape, two scans at the default) on
    its first call, runs the faster, and gives the reference backend's output either way."""
    timed = tuning({fastest: 0.1})
    mixer, reference_mixer = triton_and_reference_mixers(DEVICE, seed=3)
    x = torch.randn(2, 21, 4, device=DEVICE)
    with torch.no_grad():
        mixer(x)  # tunes
        algos = launched(monkeypatch)
        got = mixer(x)
        want = reference_mixer(x)
    assert [c for c, _ in timed] == list(CANDIDATES)
    assert all(result.shape == (2, 8, 32) for _, result in timed)  # (B, d_inner, padded length)
    (key, decision), = triton_tune.decisions().items()  # the two scans ran at the pair's decision, untuned
    assert key.mode == "pair" and key.rank == mixer.dt_rank and decision.choice == fastest
    assert algos == (["pair"] if fastest == SERIAL else ["loop", "loop"])
    assert rel_err(got, want) < 1e-5


def test_timer_measures_seconds_per_call():
    """The timer warms up with one call, estimates with another, then keeps the best of its rounds."""
    calls = []

    def run(candidate):
        calls.append(candidate)
        time.sleep(0.003)
    seconds = triton_tune.timer(run, "x", torch.device("cpu"))
    assert seconds >= 0.003 and calls == ["x"] * (2 + triton_tune.ROUNDS)  # one call per round at 3 ms a call
