"""The reference selective scan against a float64 evaluation of itself, and the backend switch."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

from ssamba.models import scan
from ssamba.models.scan import selective_scan, selective_scan_reference

GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def make_inputs(batch, dim, length, n, *, with_z=True, with_bias=True, noncontig=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, delta = r(batch, dim, length), 0.5 * r(batch, dim, length)
    A = -torch.exp(0.5 * r(dim, n))
    B, C = r(batch, n, length), r(batch, n, length)
    D, z = r(dim), r(batch, dim, length) if with_z else None
    bias = 0.3 * r(dim) if with_bias else None
    if noncontig:  # same values, other strides: (B, L, D)-major storage seen through a transpose
        u, delta = u.transpose(1, 2).contiguous().transpose(1, 2), delta.transpose(1, 2).contiguous().transpose(1, 2)
        B, C = B.transpose(1, 2).contiguous().transpose(1, 2), C.transpose(1, 2).contiguous().transpose(1, 2)
        assert not u.is_contiguous() and not B.is_contiguous()
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def run(inputs, dtype, softplus=True):
    leaves = {k: (v.detach().to(dtype).requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=softplus, backend="reference")
    weight = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
    (out * weight).sum().backward()
    return out, {k: v.grad for k, v in leaves.items() if v is not None}


CASES = [
    dict(batch=1, dim=3, length=1, n=4),
    dict(batch=2, dim=5, length=7, n=16),
    dict(batch=3, dim=8, length=131, n=16),  # crosses a chunk boundary of the reference (128)
    dict(batch=2, dim=6, length=33, n=5, noncontig=True),
    dict(batch=2, dim=4, length=19, n=16, with_z=False, with_bias=False),
    dict(batch=1, dim=7, length=260, n=3, with_z=True, with_bias=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_float32_matches_float64_forward_and_gradients(case):
    inputs = make_inputs(**{k: v for k, v in case.items()})
    out32, grads32 = run(inputs, torch.float32)
    out64, grads64 = run(inputs, torch.float64)
    assert out32.dtype == torch.float32 and out32.shape == inputs["u"].shape
    assert rel_err(out32, out64) < 1e-5
    assert set(grads32) == {k for k in GRAD_NAMES if inputs[k] is not None}
    for name, grad in grads32.items():
        assert rel_err(grad, grads64[name]) < 1e-5, name


def test_reference_equals_explicit_recurrence():
    """An independent, literal transcription of spec §5 (python loops over every index) on a tiny case."""
    inp = make_inputs(2, 3, 6, 4, seed=3)
    out = selective_scan_reference(**inp, delta_softplus=True).double()
    u, A, B, C, D, z = (inp[k].double() for k in ("u", "A", "B", "C", "D", "z"))
    delta = F.softplus(inp["delta"].double() + inp["delta_bias"].double()[:, None])
    for b in range(2):
        for e in range(3):
            s = torch.zeros(4, dtype=torch.float64)
            for t in range(6):
                s = torch.exp(delta[b, e, t] * A[e]) * s + delta[b, e, t] * u[b, e, t] * B[b, :, t]
                y = (s * C[b, :, t]).sum() + D[e] * u[b, e, t]
                y = y * z[b, e, t] * torch.sigmoid(z[b, e, t])
                assert abs(out[b, e, t].item() - y.item()) < 1e-5 * (1 + abs(y.item()))


def test_no_softplus_and_zero_length():
    inp = make_inputs(1, 2, 5, 3, with_z=False, with_bias=False)
    inp["delta"] = inp["delta"].abs()
    out = selective_scan(**inp)
    assert torch.isfinite(out).all()
    empty = make_inputs(1, 2, 1, 3)
    empty = {k: (v[..., :0] if v is not None and v.dim() == 3 else v) for k, v in empty.items()}
    assert selective_scan(**empty).shape == (1, 2, 0)


def test_shape_errors_name_the_argument():
    inp = make_inputs(2, 4, 5, 3)
    inp["B"] = inp["B"][:, :2]
    with pytest.raises(ValueError, match="B has shape"):
        selective_scan(**inp)


def test_backend_switch(monkeypatch):
    inp = make_inputs(1, 2, 4, 3)
    assert scan.get_backend(inp["u"]).name != "mamba_ssm"  # CPU tensor: never the CUDA backend
    monkeypatch.setenv(scan.ENV_VAR, "reference")
    assert scan.get_backend(inp["u"]).name == "reference"
    monkeypatch.setenv(scan.ENV_VAR, "no-such-backend")
    with pytest.raises(ValueError, match="no-such-backend"):
        selective_scan(**inp)
    monkeypatch.delenv(scan.ENV_VAR)
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan(**inp, backend="mamba_ssm")
    calls = []
    scan.register_backend("spy", lambda *a: calls.append(a) or selective_scan_reference(*a), lambda u: True, -1)
    try:
        scan.set_backend("spy")
        out = selective_scan(**inp)
        assert len(calls) == 1 and torch.equal(out, selective_scan(**inp, backend="reference"))
        scan.set_backend("auto")
        assert scan.get_backend(inp["u"]).name != "spy"
        with pytest.raises(ValueError):
            scan.set_backend("nope")
    finally:
        scan._BACKENDS.pop("spy")
        scan.set_backend(None)


def test_model_config_selects_the_backend():
    from ssamba.models import build_encoder
    from ssamba.models.config import preset

    calls = []
    scan.register_backend("counting", lambda *a: calls.append(1) or selective_scan_reference(*a), lambda u: True, -1)
    try:
        enc = build_encoder(preset("ssamba", "tiny", depth=2, input_tdim=32, scan_backend="counting")).eval()
        with torch.no_grad():
            enc(torch.randn(1, 32, 128))
        assert len(calls) == 2 * 2  # two layers, two directions each
    finally:
        scan._BACKENDS.pop("counting")


BROKEN_TRITON = r"""
import sys, types, warnings
from ssamba.models.scan import _triton_supports, triton_ops
assert triton_ops.IMPORT_ERROR == "RuntimeError: libcuda.so.1: cannot open shared object file", triton_ops.IMPORT_ERROR
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert not _triton_supports(types.SimpleNamespace(is_cuda=True))
    assert not _triton_supports(types.SimpleNamespace(is_cuda=True))  # said once
print([str(w.message) for w in caught])
"""


def test_an_installed_gpu_kernel_package_that_fails_to_import_is_said(tmp_path, monkeypatch):
    """A broken Triton or mamba_ssm install once sent CUDA scans to a slower backend without a word; an absent
    one stays silent."""
    import os
    import subprocess
    import sys
    import warnings

    fake = tmp_path / "fake"
    for package in ("triton", "mamba_ssm"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text(
            "raise RuntimeError('libcuda.so.1: cannot open shared object file')\n")
    src = os.path.join(os.path.dirname(__file__), os.pardir, "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), src])}
    proc = subprocess.run([sys.executable, "-c", BROKEN_TRITON], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = proc.stdout.strip().splitlines()[-1]
    assert said.count("triton is installed but fails to import or is not usable (RuntimeError: libcuda.so.1") == 1, said

    (fake / "triton" / "__init__.py").write_text("__version__ = '3.1.0'\n")  # imports, but older than tested
    (fake / "triton" / "language.py").write_text("")
    proc = subprocess.run([sys.executable, "-c", BROKEN_TRITON.replace(
        '"RuntimeError: libcuda.so.1: cannot open shared object file"',
        '"Triton 3.1.0 is older than 3.2, the oldest the kernels are tested with"')],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = proc.stdout.strip().splitlines()[-1]
    assert said.count("triton is installed but fails to import or is not usable (Triton 3.1.0 is older") == 1, said
    (fake / "triton" / "__init__.py").write_text("raise RuntimeError('libcuda.so.1: cannot open shared object file')\n")

    monkeypatch.syspath_prepend(str(fake))
    scan._mamba_ssm_fn.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"mamba_ssm is installed but fails to import or is not usable \(R"):
            assert scan._mamba_ssm_fn() is None
        monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # not installed: silent
        scan._mamba_ssm_fn.cache_clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert scan._mamba_ssm_fn() is None
    finally:
        scan._mamba_ssm_fn.cache_clear()


def test_the_kernel_check_is_marked_constant_for_torch_compile_as_torch_marks_it():
    """cpu.available() carries the mark of torch.compiler.assume_constant_result without importing torch._dynamo
    on `import ssamba`: torch's decorator must set exactly that mark and nothing else."""
    from ssamba.models.scan import cpu

    def probe() -> bool:
        return True

    before = set(vars(probe))
    assert torch.compiler.assume_constant_result(probe) is probe
    assert {k: vars(probe)[k] for k in set(vars(probe)) - before} == {"_dynamo_marked_constant": True}
    assert cpu.available._dynamo_marked_constant is True


def test_import_ssamba_does_not_import_torch_dynamo():
    import subprocess
    import sys

    code = "import sys, ssamba; print('torch._dynamo' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_models_beyond_the_cpu_kernels_limits_run_on_the_reference_under_auto():
    """d_state > 256 or d_conv > 8 once reached the CPU kernels under "auto" and failed in C++; now the automatic
    choice scans them on the reference backend, and naming "cpu" says why it cannot."""
    from ssamba.models import build_encoder
    from ssamba.models.config import preset
    from ssamba.models.scan import cpu
    from ssamba.models.scan.ops import selective_scan_cpu

    if not cpu.available():
        pytest.skip("the CPU kernels are not built here")
    u, delta = torch.randn(1, 4, 5), torch.rand(1, 4, 5)
    for n in (cpu.MAX_STATE, cpu.MAX_STATE + 1):  # the Python limit is the C++ one
        A, B, C = -torch.rand(4, n), torch.randn(1, n, 5), torch.randn(1, n, 5)
        if n <= cpu.MAX_STATE:
            torch.testing.assert_close(selective_scan(u, delta, A, B, C, backend="cpu"),
                                       selective_scan_reference(u, delta, A, B, C), rtol=1e-5, atol=1e-5)
            continue
        with pytest.raises(RuntimeError, match=f"d_state must be in \\[1, {cpu.MAX_STATE}\\]"):
            selective_scan_cpu(u, delta, A, B, C, None, None, None, False)  # the kernel itself refuses it
        with pytest.raises(ValueError, match=f"scan backend 'cpu' takes d_state <= {cpu.MAX_STATE}, got {n}"):
            selective_scan(u, delta, A, B, C, backend="cpu")
        assert scan.get_backend(u, d_state=n).name == "reference"
    torch.manual_seed(0)
    x = torch.randn(1, 64, 128)
    for overrides in ({"d_state": cpu.MAX_STATE + 1}, {"d_conv": cpu.MAX_CONV + 1}):
        config = preset("ssamba", "tiny", depth=2, embed_dim=32, input_tdim=64, **overrides)
        auto = build_encoder(config).eval()
        reference = build_encoder(dataclasses.replace(config, scan_backend="reference")).eval()
        reference.load_state_dict(auto.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(auto(x), reference(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(auto(x).sum(), reference(x).sum(), rtol=1e-5, atol=1e-4)  # the training path


def test_the_kernels_are_built_wherever_they_can_be():
    """The CPU-kernel and Triton test modules skip when their kernels are unavailable, so a build that breaks
    would turn hundreds of tests into skips with CI still green: where a C++ compiler (or Triton) is installed,
    the kernels must be there."""
    import importlib.util
    import os
    import shutil

    from ssamba.models.scan import cpu, triton_ops

    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler and (shutil.which("ninja") or importlib.util.find_spec("ninja")):  # what torch's extension build needs
        assert cpu.available(), "a C++ compiler is installed but the CPU kernels did not build (see the warning)"
    if importlib.util.find_spec("triton") is not None:
        assert triton_ops.available(), f"Triton is installed but does not import: {triton_ops.IMPORT_ERROR}"
