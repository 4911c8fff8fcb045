"""The Triton scan backend against the float64 reference, forward and every gradient.

Without a GPU the kernels run in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1``), so the shapes are
small; on a CUDA machine the same tests run the compiled kernels (``benchmarks/gpu_check.py`` adds large shapes).
"""
from __future__ import annotations

import pytest
import torch
from conftest import rel_err, triton_and_reference_mixers
from test_scan import GRAD_NAMES, make_inputs

from ssamba.models import scan
from ssamba.models.mamba import BiMambaMixer
from ssamba.models.scan import selective_scan, selective_scan_reference
from ssamba.models.scan import triton_ops
from ssamba.models.scan.triton_ops import TritonConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(not triton_ops.available(), reason="Triton is not installed (pip install 'ssamba[gpu]')"),
    pytest.mark.skipif(DEVICE == "cpu" and triton_ops.available() and not triton_ops.interpreted(),
                       reason="no GPU and Triton was imported without TRITON_INTERPRET=1"),
]


# Small launch shapes so that several chunks and channel blocks (some partial) are crossed; "serial" holds 16 steps
# per row (one thread's), so its smallest chunk is one row.
CONFIGS = {"tile": TritonConfig(block_d=2, chunk=8, num_warps=1, algo="tile"),
           "loop": TritonConfig(block_d=2, chunk=8, num_warps=1, algo="loop"),
           "chunked": TritonConfig(block_d=2, chunk=8, num_warps=1, algo="chunked"),
           "serial": TritonConfig(block_d=1, chunk=16, num_warps=1, algo="serial")}


@pytest.fixture(params=list(CONFIGS))
def config(request):
    """Every algorithm, at a small launch shape."""
    triton_ops.set_config(CONFIGS[request.param])
    yield
    triton_ops.set_config(None)


def run(fn, inputs, dtype, softplus):
    leaves = {k: (v.detach().to(DEVICE, dtype).requires_grad_() if v is not None else None)
              for k, v in inputs.items()}
    out = fn(**leaves, delta_softplus=softplus)
    weight = torch.linspace(-1, 1, out.numel(), dtype=dtype, device=DEVICE).reshape(out.shape)
    (out * weight).sum().backward()
    return out, {k: v.grad for k, v in leaves.items() if v is not None}


CASES = [
    dict(batch=2, dim=3, length=19, n=4),                  # 3 chunks, the last partial; a partial channel block
    dict(batch=1, dim=4, length=8, n=16),                  # exactly one chunk, the usual d_state
    dict(batch=2, dim=5, length=17, n=5, noncontig=True),  # d_state padded to 8; strided inputs
    dict(batch=1, dim=3, length=7, n=3, with_z=False, with_bias=False),
    dict(batch=1, dim=2, length=1, n=4),
]


@pytest.mark.parametrize("case, softplus", [(c, True) for c in CASES] + [(CASES[0], False)],
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) if isinstance(c, dict) else
                         ("softplus" if c else "raw-delta"))
def test_forward_and_gradients_match_float64(case, softplus, config):
    inputs = make_inputs(**case)
    out, grads = run(triton_ops.selective_scan_triton, inputs, torch.float32, softplus)
    out64, grads64 = run(selective_scan_reference, inputs, torch.float64, softplus)
    assert out.dtype == torch.float32 and out.shape == inputs["u"].shape
    assert rel_err(out, out64) < 1e-4
    assert set(grads) == {k for k in GRAD_NAMES if inputs[k] is not None}
    for name, grad in grads.items():
        assert grad.dtype == torch.float32 and grad.shape == inputs[name].shape, name
        assert rel_err(grad, grads64[name]) < 1e-4, name


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_inference_path_matches_float64(config, reverse):
    """Without gradients the forward saves nothing (and "chunked" still needs its chunk states): 5 chunks here."""
    inputs = make_inputs(batch=2, dim=3, length=37, n=16)
    with torch.no_grad():
        out = selective_scan(**{k: v.to(DEVICE) if v is not None else None for k, v in inputs.items()},
                             delta_softplus=True, backend="triton", reverse=reverse)
        ref = selective_scan(**{k: v.double() if v is not None else None for k, v in inputs.items()},
                             delta_softplus=True, backend="reference", reverse=reverse)
    assert rel_err(out, ref) < 1e-4


def test_reverse_scan_matches_flipped_reference(config):
    """``reverse=True`` walks the time axis backwards through negated strides: no flipped copies, same numbers."""
    inputs = make_inputs(batch=2, dim=3, length=19, n=4)
    triton = lambda **kw: selective_scan(**kw, backend="triton", reverse=True)  # noqa: E731
    reference = lambda **kw: selective_scan(**kw, backend="reference", reverse=True)  # noqa: E731
    out, grads = run(triton, inputs, torch.float32, True)
    out64, grads64 = run(reference, inputs, torch.float64, True)
    forward_only = selective_scan(**{k: v.to(DEVICE) if v is not None else None for k, v in inputs.items()},
                                  delta_softplus=True, backend="reference")
    assert rel_err(out, forward_only.double()) > 0.1  # the direction matters for these inputs
    assert rel_err(out, out64) < 1e-4
    for name, grad in grads.items():
        assert rel_err(grad, grads64[name]) < 1e-4, name


def record_launches(monkeypatch) -> list[tuple[str, tuple, dict]]:
    """Every kernel launch of the scan from now on, as (kernel name, arguments, keyword arguments)."""
    launches = []
    real = triton_ops._kernel

    def recording(name, kernel_algo):
        kernel = real(name, kernel_algo)

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches.append((name, args, kwargs))
                    return kernel[grid](*args, **kwargs)
                return launch
        return Launcher()

    monkeypatch.setattr(triton_ops, "_kernel", recording)
    return launches


@pytest.mark.parametrize("algo", ["loop", "chunked", "serial"])
def test_loop_kernels_read_a_reverse_scan_ascending(monkeypatch, algo):
    """Reverse scans reach the loop kernels as REVERSE with positive strides, on a sequence padded to a multiple of
    16 steps: negated strides or lengths Triton cannot prove 16-divisible compiled to 3x the layout conversions and
    no vector loads (tests/test_triton_compile.py pins the kernels)."""
    launches = record_launches(monkeypatch)
    triton_ops.set_config(CONFIGS[algo])
    try:
        inputs = make_inputs(batch=1, dim=3, length=19, n=4)
        run(lambda **kw: selective_scan(**kw, backend="triton", reverse=True), inputs, torch.float32, True)
    finally:
        triton_ops.set_config(None)
    names = [name for name, _, _ in launches]
    assert "fwd" in names and "bwd" in names and (("chunk_end" in names) == (algo == "chunked"))
    for name, args, kwargs in launches:
        if name != "chunk_carry":
            assert kwargs.get("REVERSE") is True, name
            ints = [a for a in args if isinstance(a, int)]
            assert all(a >= 0 for a in ints), (name, args)
            # 19 steps padded with identity steps to 32: lengths and row strides Triton can prove 16-divisible
            assert 32 in ints and 19 not in ints, (name, ints)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("chunk, backward_chunk, stages, unroll, n",
                         [(64, None, 1, 1, 5), (64, 16, 2, 1, 5), (16, 32, 1, 2, 5), (64, None, 1, 2, 4)],
                         ids=["chunk64-backward-default", "chunk64-backward16-pipelined",
                              "chunk16-backward32-odd-states-unpaired", "chunk64-paired-states"])
def test_serial_rows_and_chunks_match_float64(monkeypatch, reverse, chunk, backward_chunk, stages, unroll, n):
    """The serial forward with several rows per chunk (the exclusive scan across rows), several chunks (the state
    carried through memory), and a last chunk mostly past the end (its rows read a real row instead of zeros);
    forward, reverse, and the training path: the states it saves at the starts of the loop backward's chunks, which
    may be shorter than its own (several per chunk) or longer (one every other chunk), and the pre-gate output.
    ``unroll`` 2 scans states in pairs, where their number is even (else one at a time)."""
    if backward_chunk is not None:
        monkeypatch.setattr(triton_ops, "SERIAL_BACKWARD", TritonConfig(1, backward_chunk, 1, "loop"))
    launches = record_launches(monkeypatch)
    triton_ops.set_config(TritonConfig(block_d=1, chunk=chunk, num_warps=1, algo="serial", stages=stages,
                                       unroll=unroll))
    try:
        inputs = make_inputs(batch=2, dim=3, length=150, n=n)  # padded to 160 (10 rows)
        scan_t = lambda **kw: selective_scan(**kw, backend="triton", reverse=reverse)  # noqa: E731
        scan_r = lambda **kw: selective_scan(**kw, backend="reference", reverse=reverse)  # noqa: E731
        out, grads = run(scan_t, inputs, torch.float32, True)
        out64, grads64 = run(scan_r, inputs, torch.float64, True)
        with torch.no_grad():
            inference = scan_t(**{k: v.to(DEVICE) if v is not None else None for k, v in inputs.items()},
                               delta_softplus=True)
    finally:
        triton_ops.set_config(None)
    assert rel_err(out, out64) < 1e-4 and rel_err(inference, out64) < 1e-4
    for name, grad in grads.items():
        assert rel_err(grad, grads64[name]) < 1e-4, name
    forwards = [kwargs for name, _, kwargs in launches if name == "fwd"]
    assert len(forwards) == 2 and all(kw["UNROLL"] == (unroll if n % unroll == 0 else 1) for kw in forwards)


def test_calls_past_32_bit_offsets_split_the_batch(monkeypatch):
    """Offsets past 2**31 - 1 elements would wrap in the kernels' 32-bit arithmetic: such a call runs batch slices
    (here the limit is lowered to one item's span: 3 channels x 32 padded steps, 4 states x 32 for B and C), with
    the same outputs and gradients; one item past the limit is refused by name."""
    inputs = make_inputs(batch=3, dim=3, length=19, n=4)
    whole, whole_grads = run(triton_ops.selective_scan_triton, inputs, torch.float32, True)
    launches = []
    real = triton_ops._SelectiveScan.apply
    monkeypatch.setattr(triton_ops._SelectiveScan, "apply", lambda *a: launches.append(a[0].shape[0]) or real(*a))
    monkeypatch.setattr(triton_ops, "MAX_OFFSET", 4 * 32)
    split, split_grads = run(triton_ops.selective_scan_triton, inputs, torch.float32, True)
    assert launches == [1, 1, 1]
    assert torch.equal(split, whole)
    for name, grad in split_grads.items():
        assert rel_err(grad, whole_grads[name]) < 1e-6, name
    monkeypatch.setattr(triton_ops, "MAX_OFFSET", 4 * 32 - 1)
    with pytest.raises(ValueError, match=r"selective scan of \(3, 3, 19\): one batch item spans 128 elements"):
        run(triton_ops.selective_scan_triton, inputs, torch.float32, True)


def test_default_launch_shape_matches_reference():
    """The shipped default (wider blocks, one long chunk here) computes the same function."""
    inputs = make_inputs(batch=1, dim=5, length=40, n=16)
    out, grads = run(triton_ops.selective_scan_triton, inputs, torch.float32, True)
    out64, grads64 = run(selective_scan_reference, inputs, torch.float64, True)
    assert rel_err(out, out64) < 1e-4
    for name, grad in grads.items():
        assert rel_err(grad, grads64[name]) < 1e-4, name


def test_bfloat16_activations(config):
    """Activations in bf16 (as under autocast) are read as such, computed in float32, returned in u's dtype."""
    inputs = make_inputs(batch=1, dim=3, length=12, n=4)
    inputs = {k: (v.bfloat16() if v is not None and k in ("u", "delta", "B", "C", "z") else v)
              for k, v in inputs.items()}
    with torch.no_grad():
        out = triton_ops.selective_scan_triton(**{k: v.to(DEVICE) if v is not None else None
                                                  for k, v in inputs.items()}, delta_softplus=True)
        ref = selective_scan_reference(**{k: v.double() if v is not None else None for k, v in inputs.items()},
                                       delta_softplus=True)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 1e-2


def test_mixer_through_the_triton_backend_equals_reference(config):
    """The whole bidirectional mixer (conv, projections, both scan directions, flips) with the triton backend."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(d_model=4, d_state=4, expand=2).to(DEVICE)
    x = torch.randn(2, 11, 4, device=DEVICE)
    results = []
    for backend in ("triton", "reference"):
        mixer.scan_backend = backend
        mixer.zero_grad()
        xi = x.clone().requires_grad_()
        out = mixer(xi, reverse=True)
        (out * torch.linspace(-1, 1, out.numel(), device=DEVICE).reshape(out.shape)).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad.clone() for n, p in mixer.named_parameters()}))
    (out_t, dx_t, g_t), (out_r, dx_r, g_r) = results
    assert rel_err(out_t, out_r) < 1e-5 and rel_err(dx_t, dx_r) < 1e-5
    for name in g_r:
        assert rel_err(g_t[name], g_r[name]) < 1e-4, name


def test_registry_prefers_triton_on_cuda_and_never_picks_it_for_cpu_under_auto():
    backends = scan._BACKENDS
    assert backends["triton"].priority > backends["mamba_ssm"].priority > backends["cpu"].priority
    cpu_tensor = torch.zeros(1, 1, 1)
    assert scan.get_backend(cpu_tensor).name != "triton"
    if DEVICE == "cpu":  # by name, CPU tensors run in the interpreter
        assert scan.get_backend(cpu_tensor, "triton").name == "triton"
    else:
        assert scan.get_backend(torch.zeros(1, 1, 1, device="cuda")).name == "triton"


def test_selective_scan_dispatches_to_triton(config):
    inputs = {k: (v.to(DEVICE) if v is not None else None) for k, v in make_inputs(batch=1, dim=2, length=9, n=4).items()}
    out = selective_scan(**inputs, delta_softplus=True, backend="triton")
    ref = selective_scan(**inputs, delta_softplus=True, backend="reference")
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("text, message", [("4,32", "expected .block_d,chunk,num_warps"), ("3,32,4", "power of two"),
                                           ("4,0,4", "power of two")])
def test_config_string_errors(text, message):
    with pytest.raises(ValueError, match=message):
        TritonConfig.parse(text)
    assert TritonConfig.parse("8,16,2") == TritonConfig(8, 16, 2)
    assert TritonConfig.parse("1,512,4,loop") == TritonConfig(1, 512, 4, "loop")
    serial = TritonConfig.parse("1,1024,2,serial,2")
    assert serial == TritonConfig(1, 1024, 2, "serial", stages=2)
    assert TritonConfig.parse(serial.spec()) == serial and TritonConfig(1, 8, 1).spec() == "1,8,1,loop"
    paired = TritonConfig.parse("1,512,1,serial,1,2")
    assert paired == TritonConfig(1, 512, 1, "serial", unroll=2) and paired.spec() == "1,512,1,serial,1,2"
    with pytest.raises(ValueError, match="unroll must be 1 or 2"):
        TritonConfig.parse("1,512,1,serial,1,4")
    with pytest.raises(ValueError, match="unroll 2 interleaves"):
        TritonConfig(1, 512, 4, "loop", unroll=2)
    with pytest.raises(ValueError, match="expected"):
        TritonConfig.parse("1,512,1,serial,1,2,3")
    with pytest.raises(ValueError, match="algo"):
        TritonConfig.parse("1,512,4,fast")
    with pytest.raises(ValueError, match="block_d must be 1"):
        TritonConfig(2, 512, 4, "serial")
    with pytest.raises(ValueError, match="chunk at least 16"):
        TritonConfig(1, 8, 1, "serial")
    with pytest.raises(ValueError, match="has none"):
        TritonConfig.parse("1,512,4,loop,2")
    with pytest.raises(ValueError, match="integers"):
        TritonConfig.parse("1,512,4,serial,two")
    with pytest.raises(ValueError, match="algo must be one of tile, loop, chunked, serial, got 'chunk'"):
        TritonConfig(1, 512, 4, "chunk")  # once accepted, and run as 'loop'
    with pytest.raises(ValueError, match="chunk must be a power of two, got 500"):
        TritonConfig(1, 500, 4)


def test_the_mixer_pads_once_and_its_scans_copy_nothing(monkeypatch):
    """The flip-free mixer pads its input to a multiple of 16 identity steps, so the scan wrapper gets aligned,
    contiguous u, delta, z and B/C views and copies none of them (it would pad each on every call otherwise)."""
    copies = []
    real = triton_ops._padded

    def counting(t, length, fill):
        out = real(t, length, fill)
        if out is not t:
            copies.append(tuple(t.shape))
        return out

    monkeypatch.setattr(triton_ops, "_padded", counting)
    torch.manual_seed(0)
    mixer = BiMambaMixer(d_model=4, d_state=4, expand=2).to(DEVICE)
    mixer.scan_backend = "triton"
    x = torch.randn(2, 11, 4, device=DEVICE, requires_grad=True)
    out = mixer(x, reverse=True)
    out.sum().backward()
    assert copies == []
    # the direct API still pads (and copies) unaligned inputs itself
    inputs = make_inputs(batch=1, dim=3, length=11, n=4)
    selective_scan(**{k: v.to(DEVICE) if v is not None else None for k, v in inputs.items()}, backend="triton")
    assert copies


def test_inference_launches_without_autograd_and_training_records_a_graph(monkeypatch):
    """Under no_grad (or with no input wanting a gradient) the scan and conv wrappers launch their kernels directly,
    as ``autograd.Function.apply`` costs more host time than a launch; with a gradient wanted they go through it."""
    from ssamba.models.scan import triton_conv

    mixer = BiMambaMixer(d_model=4, d_state=4, expand=2, scan_backend="triton").to(DEVICE)
    x = torch.randn(2, 9, 4, device=DEVICE)
    applied = []
    for fn in (triton_ops._SelectiveScan, triton_conv._ConvSilu):
        real = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, _real=real, _fn=fn: applied.append(_fn.__name__) or _real(*a))
    with torch.no_grad():
        inference = mixer(x)
    assert applied == [] and inference.grad_fn is None
    mixer.requires_grad_(False)
    assert torch.equal(mixer(x), inference) and applied == []  # no parameter wants a gradient either
    mixer.requires_grad_(True)
    training = mixer(x)
    assert sorted(set(applied)) == ["_ConvSilu", "_SelectiveScan"] and len(applied) == 4
    assert torch.equal(training.detach(), inference)
    training.sum().backward()
    assert mixer.A_log.grad is not None and mixer.conv1d_b.weight.grad is not None


@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "raw-delta"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_serial_forward_computes_delta_from_its_factors(monkeypatch, reverse, softplus):
    """``delta_proj = (W_dt, dt)``: the serial forward computes delta = W_dt dt in the kernel for inference (dt, B and
    C rows of one projection, as in the mixer), the steps from ``valid_length`` on identity steps; the same as the
    reference scan of the explicit delta.  With a gradient wanted, delta is formed first and the usual path runs."""
    torch.manual_seed(3)
    batch, dim, rank, n, length, valid = 2, 3, 5, 4, 48, 37
    u, z = torch.randn(batch, dim, length, device=DEVICE), torch.randn(batch, dim, length, device=DEVICE)
    x_dbl = torch.randn(batch, rank + 2 * n, length, device=DEVICE)
    w_dt = 0.5 * torch.randn(dim, rank, device=DEVICE)
    A = -torch.rand(dim, n, device=DEVICE) - 0.5
    D, bias = torch.randn(dim, device=DEVICE), torch.randn(dim, device=DEVICE)
    if not softplus:  # a raw delta must stay positive; its identity step is 0
        x_dbl[:, :rank].abs_()
        w_dt, bias = w_dt.abs() / 4, bias.abs() / 4
    dt, B, C = x_dbl.split([rank, n, n], dim=1)
    delta = torch.einsum("dr,brl->bdl", w_dt, dt)
    delta[..., valid:] = float("-inf") if softplus else -bias[:, None]  # identity steps: delta 0 after the bias
    want = selective_scan(u, delta, A, B, C, D, z, bias, softplus, backend="reference", reverse=reverse)
    launches = record_launches(monkeypatch)
    triton_ops.set_config(TritonConfig(1, 16, 1, "serial", unroll=2))
    try:
        with torch.no_grad():
            fused = triton_ops.selective_scan_triton(u, None, A, B, C, D, z, bias, softplus, reverse,
                                                     delta_proj=(w_dt, dt), valid_length=valid)
        assert [kw["DT_RANK"] for name, _, kw in launches if name == "fwd"] == [rank]
        w_leaf = w_dt.clone().requires_grad_()
        trained = triton_ops.selective_scan_triton(u, None, A, B, C, D, z, bias, softplus, reverse,
                                                   delta_proj=(w_leaf, dt), valid_length=valid)
        assert [kw["DT_RANK"] for name, _, kw in launches if name == "fwd"] == [rank, 0]
        trained.sum().backward()
        assert w_leaf.grad is not None and torch.isfinite(w_leaf.grad).all()
        with pytest.raises(ValueError, match="not both"):
            triton_ops.selective_scan_triton(u, delta, A, B, C, D, z, bias, True, delta_proj=(w_dt, dt))
        with pytest.raises(ValueError, match="delta_proj"):
            triton_ops.selective_scan_triton(u, None, A, B, C, D, z, bias, True, delta_proj=(w_dt.t(), dt))
    finally:
        triton_ops.set_config(None)
    assert rel_err(fused, want) < 1e-5 and rel_err(trained.detach(), want) < 1e-5


def test_mixer_inference_on_the_serial_forward_equals_training_path():
    """The flip-free mixer hands dt_proj to the serial forward (inference) and forms delta itself otherwise: the
    same outputs, on a sequence padded with identity steps (9 steps -> 16)."""
    torch.manual_seed(4)
    mixer = BiMambaMixer(d_model=4, d_state=4, expand=2, scan_backend="triton").to(DEVICE)
    x = torch.randn(2, 9, 4, device=DEVICE)
    triton_ops.set_config(TritonConfig(1, 16, 1, "serial"))
    try:
        with torch.no_grad():
            inference = mixer(x, reverse=True)
        training = mixer(x, reverse=True)
    finally:
        triton_ops.set_config(None)
    reference = BiMambaMixer(d_model=4, d_state=4, expand=2, scan_backend="reference").to(DEVICE)
    reference.load_state_dict(mixer.state_dict())
    with torch.no_grad():
        want = reference(x, reverse=True)
    assert rel_err(inference, want) < 1e-5 and rel_err(training.detach(), want) < 1e-5


@pytest.mark.parametrize("algo", ["loop", "serial"])
def test_mixer_on_triton_under_bf16_autocast(algo):
    """Under bf16 autocast the mixer's projections run in bf16 and the scan in float32: dt_proj on bf16 dt, formed
    by the wrapper (the loop algorithm, or with gradients) or inside the serial forward (inference), within bf16
    rounding of the float32 reference."""
    mixer, reference = triton_and_reference_mixers(DEVICE, seed=5)
    x = torch.randn(2, 9, 4, device=DEVICE)
    with torch.no_grad():
        want = reference(x)
    triton_ops.set_config(CONFIGS[algo])
    try:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            with torch.no_grad():
                inference = mixer(x)
            training = mixer(x)
    finally:
        triton_ops.set_config(None)
    assert rel_err(inference.float(), want) < 2e-2 and rel_err(training.detach().float(), want) < 2e-2
