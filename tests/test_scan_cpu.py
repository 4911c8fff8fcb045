"""The C++ CPU selective scan against the float64 reference: forward, every gradient, every instruction set."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from ssamba.models import scan
from ssamba.models.scan import cpu, ops
from ssamba.models.scan.reference import selective_scan_reference

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the CPU kernels could not be built here")

ISAS = torch.ops.ssamba_cpu.supported_isas() if cpu.available() else []
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    """Elementwise |a - e| <= rel * (|e| + max|e|): relative to the tensor's scale, so near-zero entries count."""
    a, e = actual.detach().double(), expected.detach().double()
    scale = e.abs().max().clamp_min(1e-30)
    err = ((a - e).abs() / (e.abs() + scale)).max().item()
    assert err <= rel, f"{what}: relative error {err:.2e} > {rel:.0e}"


@pytest.fixture(params=ISAS)
def isa(request):
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa("auto")


def make_inputs(batch: int, dim: int, length: int, nstate: int, *, z: bool, bias: bool, skip: bool,
                noncontiguous: bool, seed: int) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        if noncontiguous and len(shape) == 3:  # same values, (B, L, X) memory layout seen through a transpose
            return (torch.randn(shape[0], shape[2], shape[1], generator=g) * scale).transpose(1, 2)
        return torch.randn(*shape, generator=g) * scale

    A = -torch.exp(torch.randn(dim, nstate, generator=g) * 0.5)
    if noncontiguous:
        A = torch.cat([A, A], dim=1)[:, ::2]
    return {
        "u": rnd(batch, dim, length),
        "delta": rnd(batch, dim, length, scale=0.7),
        "A": A,
        "B": rnd(batch, nstate, length),
        "C": rnd(batch, nstate, length),
        "D": torch.randn(dim, generator=g) if skip else None,
        "z": rnd(batch, dim, length) if z else None,
        "delta_bias": torch.randn(dim, generator=g) * 0.5 if bias else None,
    }


CASES = [
    # batch, dim, length, nstate, z, bias, D, softplus, noncontiguous
    (1, 16, 1, 16, True, True, True, True, False),        # L = 1
    (2, 37, 100, 16, True, True, True, True, False),      # L not a multiple of the chunk, D not of the lanes
    (3, 24, 65, 5, False, False, False, False, False),    # other d_state, nothing optional
    (2, 20, 77, 16, True, False, True, True, True),       # non-contiguous inputs
    (1, 9, 131, 3, False, True, True, True, True),        # several chunks, tiny dims
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}D{}L{}N{}".format(*c[:4]))
def test_forward_and_every_gradient_match_float64_reference(case, isa):
    batch, dim, length, nstate, z, bias, skip, softplus, noncontig = case
    inputs = make_inputs(batch, dim, length, nstate, z=z, bias=bias, skip=skip, noncontiguous=noncontig,
                         seed=sum(case[:4]))
    if noncontig:
        assert not inputs["u"].is_contiguous() and not inputs["A"].is_contiguous()
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    leaves64 = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    out = scan.selective_scan(**{k: leaves.get(k) for k in NAMES}, delta_softplus=softplus, backend="cpu")
    ref = selective_scan_reference(**{k: leaves64.get(k) for k in NAMES}, delta_softplus=softplus)
    assert out.dtype == torch.float32 and out.shape == (batch, dim, length)
    assert_rel_close(out, ref, 1e-5, "output")

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    got = torch.autograd.grad(out, list(leaves.values()), grad)
    want = torch.autograd.grad(ref, list(leaves64.values()), grad.double())
    for name, g_got, g_want in zip(leaves, got, want):
        assert g_got.shape == leaves[name].shape
        if name == "A" and length == 1:  # s_{-1} = 0: dA is exactly zero
            assert g_got.abs().max() == 0 and g_want.abs().max() == 0
            continue
        assert_rel_close(g_got, g_want, 1e-5, f"grad {name}")


def test_two_directions_average_and_gate_like_two_reference_scans():
    """The mixer's op: direction 1 runs backwards in time; outputs are gated by silu(z) and averaged."""
    batch, length, dim, nstate = 2, 70, 24, 16
    g = torch.Generator().manual_seed(3)
    t = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    per_dir = [
        dict(u=t(batch, length, dim), delta=t(batch, length, dim) * 0.5, A=-torch.exp(t(dim, nstate) * 0.3),
             B=t(batch, length, nstate), C=t(batch, length, nstate), D=t(dim), bias=t(dim) * 0.3)
        for _ in range(2)
    ]
    z = t(batch, length, dim).requires_grad_()
    for d in per_dir:
        for v in d.values():
            v.requires_grad_()
    out = ops.scan(*[[d[k] for d in per_dir] for k in ("u", "delta", "A", "B", "C", "D", "bias")], z, True)

    def ref_dir(d, flip):
        f = (lambda x: x.flip(1)) if flip else (lambda x: x)
        cl = lambda x: f(x.double()).transpose(1, 2)  # noqa: E731
        y = selective_scan_reference(cl(d["u"]), cl(d["delta"]), d["A"].double(), cl(d["B"]), cl(d["C"]),
                                     d["D"].double(), cl(z), d["bias"].double(), True)
        return f(y.transpose(1, 2))

    ref = (ref_dir(per_dir[0], False) + ref_dir(per_dir[1], True)) / 2
    assert_rel_close(out, ref, 1e-5, "output")
    leaves = [v for d in per_dir for v in d.values()] + [z]
    grad = t(batch, length, dim)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad.double())
    for i, (a, e) in enumerate(zip(got, want)):
        assert_rel_close(a, e, 1e-5, f"grad {i}")


def test_empty_sequence_has_empty_outputs_and_zero_parameter_gradients():
    """L = 0 (both directions, with z): nothing to scan; the gradients of A, D and delta_bias are zeros, z gets its
    own (empty) gradient, and a sum's expanded (stride-0) output gradient is accepted."""
    g = torch.Generator().manual_seed(4)
    t = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    per_dir = [dict(u=t(2, 0, 24), delta=t(2, 0, 24), A=t(24, 16), B=t(2, 0, 16), C=t(2, 0, 16), D=t(24),
                    bias=t(24)) for _ in range(2)]
    z = t(2, 0, 24)
    out = ops.scan(*[[d[k] for d in per_dir] for k in ("u", "delta", "A", "B", "C", "D", "bias")], z, True)
    assert out.shape == (2, 0, 24)
    out.sum().backward()
    for d in per_dir:
        for name in ("A", "D", "bias"):
            assert torch.equal(d[name].grad, torch.zeros_like(d[name])), name
        assert d["u"].grad.shape == (2, 0, 24) and d["B"].grad.shape == (2, 0, 16)
    assert z.grad.shape == (2, 0, 24)


def test_decay_exp_is_accurate_across_its_range_and_propagates_nan(isa):
    """The kernels' vectorised exp (vmath.h) seen through the scan: with one state, B = C = 1, u = (1, 0) and
    delta = (1, d), y_1 = exp(d * A).  Per channel, d * A sweeps decays from 1 (d = 0 and tiny d) through
    the polynomial's whole range to underflow; a NaN delta must come out NaN in its own channel only."""
    t = torch.cat([torch.tensor([0.0, -1e-30, -1e-7, -0.5, -1.0, -87.0, -88.5, -103.0, -104.0, -500.0]),
                   -torch.logspace(-6, 2, 300, dtype=torch.float64).float(),
                   -torch.rand(300, generator=torch.Generator().manual_seed(2)) * 3])
    dim = t.numel() + 1
    A = torch.ones(dim, 1)
    A[:-1, 0] = t
    delta = torch.ones(1, dim, 2)
    delta[0, -1, 1] = float("nan")
    u = torch.zeros(1, dim, 2)
    u[..., 0] = 1.0
    B = C = torch.ones(1, 1, 2)
    y = scan.selective_scan(u, delta, A, B, C, backend="cpu")[0, :, 1]
    want = torch.exp(t.double())
    got = y[:-1].double()
    rel = ((got - want).abs() / want.clamp_min(1e-300)).where(want > 1e-37, torch.zeros_like(want))
    # 2 ulp of the polynomial, plus the float32 rounding of the argument t * log2(e) (relative error of the result
    # ~1.2e-7 * |t|: exp amplifies it; mamba_ssm's exp2f of delta * A * log2(e) shares it)
    bound = 4e-7 + 1.2e-7 * t.double().abs()
    assert (rel <= bound).all(), f"relative error {rel.max():.2e} at exp({t[(rel / bound).argmax()]})"
    tiny = want <= 1e-37  # subnormal and underflowed decays: absolute error
    assert tiny.sum() >= 5 and ((got - want)[tiny].abs() <= 1e-38).all()
    assert y[0] == 1.0  # d * A = 0: exactly no decay
    assert torch.isnan(y[-1]) and not torch.isnan(y[:-1]).any()


@pytest.mark.parametrize("length", [70, 400])  # B*L*E = 50k (cached: 4 tasks per thread), 288k (streaming)
def test_results_do_not_depend_on_threads_or_task_grouping(length):
    """Tasks group channel blocks by thread count and tensor size (csrc/ops.cpp, group_size); every grouping
    must give bit-identical outputs and gradients (the backward sums dB/dC per fixed set of kPartialBlocks channel
    blocks, in block order, and every task owns whole sets)."""
    batch, dim, nstate = 2, 360, 16  # 23 channel blocks of 16 (the last one partial): a ragged last set
    g = torch.Generator().manual_seed(11)
    t = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    per_dir = [dict(u=t(batch, length, dim), delta=t(batch, length, dim) * 0.5 - 1,
                    A=-torch.exp(t(dim, nstate) * 0.3), B=t(batch, length, nstate), C=t(batch, length, nstate),
                    D=t(dim), bias=t(dim) * 0.3) for _ in range(2)]
    z, grad = t(batch, length, dim), t(batch, length, dim)

    def run(threads: int) -> list[torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            leaves = [v.clone().requires_grad_() for d in per_dir for v in d.values()] + [z.clone().requires_grad_()]
            args = [[leaves[7 * i + j] for i in range(2)] for j in range(7)]
            out = ops.scan(*args, leaves[-1], True)
            return [out.detach()] + list(torch.autograd.grad(out, leaves, grad))
        finally:
            torch.set_num_threads(before)

    # 1 thread: the widest groups; 2 and 3 threads: narrower ones (2: 6 blocks, rounded up to whole sets) and a
    # ragged last task
    one = run(1)
    for threads in (2, 3):
        for i, (a, b) in enumerate(zip(one, run(threads))):
            assert torch.equal(a, b), f"tensor {i} differs between 1 and {threads} threads"


@pytest.mark.parametrize("length", [1, 37, 300])  # 300: several row chunks (128) with their halos
@pytest.mark.parametrize("dim", [21, 83])  # 83: groups of 4 channel blocks and single ones, a partial last block
@pytest.mark.parametrize("width", [4, 3, 8])  # 4: the compiled-in width; others take the any-width kernels
def test_conv_silu_both_directions_match_conv1d(isa, length, dim, width):
    batch = 2
    g = torch.Generator().manual_seed(5)
    xz = torch.randn(batch, length, 2 * dim, generator=g)
    x = xz[..., :dim].requires_grad_()  # strided view, as the mixer passes it
    params = [torch.randn(dim, width, generator=g) * 0.5, torch.randn(dim, generator=g),
              torch.randn(dim, width, generator=g) * 0.5, torch.randn(dim, generator=g)]
    params = [p.requires_grad_() for p in params]
    y_f, y_b = ops.conv_silu_bidir(x, *params)

    def ref_conv(x64, w, b, flip):
        """Spec §5 step 2 written out: causal shift-and-add (F.conv1d's float64 backward takes seconds)."""
        xt = x64.flip(1) if flip else x64
        xp = F.pad(xt, (0, 0, width - 1, 0))  # zeros before t = 0
        y = F.silu(b + sum(w[:, k] * xp[:, k:k + length] for k in range(width)))
        return y.flip(1) if flip else y

    p64 = [p.double() for p in params]
    x64 = x.double()
    r_f, r_b = ref_conv(x64, p64[0], p64[1], False), ref_conv(x64, p64[2], p64[3], True)
    with torch.no_grad():  # the written-out reference is F.conv1d(padding=K-1)[..., :L] (spec §5)
        conv = F.conv1d(x64.detach().transpose(1, 2), p64[0].detach().unsqueeze(1), p64[1].detach(),
                        padding=width - 1, groups=dim)[..., :length]
        torch.testing.assert_close(r_f.detach(), F.silu(conv).transpose(1, 2))
    assert_rel_close(y_f, r_f, 1e-6, "y_f")
    assert_rel_close(y_b, r_b, 1e-6, "y_b")
    gf, gb = torch.randn(2, batch, length, dim, generator=g)
    got = torch.autograd.grad((y_f * gf).sum() + (y_b * gb).sum(), [x] + params)
    want = torch.autograd.grad((r_f * gf).sum() + (r_b * gb).sum(), [x] + params)
    for name, a, e in zip(("x", "w_f", "b_f", "w_b", "b_b"), got, want):
        assert_rel_close(a, e, 1e-5, f"grad {name}")


def test_auto_backend_is_cpu_for_float32_and_reference_for_float64():
    assert scan.get_backend(torch.zeros(1, 2, 3)).name == "cpu"
    assert scan.get_backend(torch.zeros(1, 2, 3, dtype=torch.float64)).name == "reference"


def test_bfloat16_activations_are_read_exactly_and_computed_in_float32(isa):
    """Under bf16 autocast the matmuls hand the scan bf16 activations: same result as float64 math on them."""
    x = make_inputs(2, 21, 70, 16, z=True, bias=True, skip=True, noncontiguous=False, seed=1)
    cl = lambda t: t.transpose(1, 2).bfloat16().contiguous().requires_grad_()  # noqa: E731
    acts = {k: cl(x[k]) for k in ("u", "delta", "B", "C", "z")}
    params = {k: x[k].requires_grad_() for k in ("A", "D", "delta_bias")}
    out = ops.scan([acts["u"]], [acts["delta"]], [params["A"]], [acts["B"]], [acts["C"]], [params["D"]],
                   [params["delta_bias"]], acts["z"], True)
    assert out.dtype == torch.float32
    ref_leaves = {k: v.detach().double().transpose(1, 2).requires_grad_() for k, v in acts.items()}
    ref_leaves.update({k: v.detach().double().requires_grad_() for k, v in params.items()})
    ref = selective_scan_reference(*(ref_leaves[k] for k in NAMES), delta_softplus=True).transpose(1, 2)
    assert_rel_close(out, ref, 1e-5, "output")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    got = dict(zip(["u", "A"], torch.autograd.grad(out, [acts["u"], params["A"]], grad)))
    want = dict(zip(["u", "A"], torch.autograd.grad(ref, [ref_leaves["u"], ref_leaves["A"]], grad.double())))
    assert got["u"].dtype == torch.bfloat16 and got["A"].dtype == torch.float32  # autograd casts per input
    assert_rel_close(got["A"], want["A"], 1e-5, "grad A")
    assert_rel_close(got["u"].float(), want["u"].transpose(1, 2), 4e-3, "grad u (rounded to bf16)")


def test_bfloat16_through_the_backend_api():
    x = make_inputs(2, 16, 40, 16, z=True, bias=True, skip=True, noncontiguous=False, seed=1)
    half = {k: (v.bfloat16() if v is not None and v.dim() == 3 else v) for k, v in x.items()}
    out = scan.selective_scan(**half, delta_softplus=True, backend="cpu")
    ref = selective_scan_reference(**half, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    assert_rel_close(out.float(), ref.float(), 4e-3, "bf16 output (one bf16 rounding of the same float32 result)")


def test_conv_silu_bfloat16_in_and_out(isa):
    batch, length, dim = 2, 150, 40
    g = torch.Generator().manual_seed(9)
    x = torch.randn(batch, length, 2 * dim, generator=g).bfloat16()[..., :dim]
    w = [torch.randn(dim, 4, generator=g), torch.randn(dim, generator=g)] * 2
    y_f, y_b = ops.conv_silu_bidir(x, *w)
    f_f, f_b = ops.conv_silu_bidir(x.float(), *w)
    assert y_f.dtype == y_b.dtype == torch.bfloat16
    assert torch.equal(y_f, f_f.bfloat16()) and torch.equal(y_b, f_b.bfloat16())  # round-to-nearest-even
    # backward: bf16 inputs and output gradients are widened exactly, so every gradient equals the float32 op's;
    # the input's gradient comes in the input's dtype, rounded once (as autograd's cast of a float32 one would)
    g_f, g_b = (torch.randn(batch, length, dim, generator=g).bfloat16() for _ in range(2))
    got = torch.ops.ssamba_cpu.conv_silu_bwd(g_f, g_b, x, *w)
    want = torch.ops.ssamba_cpu.conv_silu_bwd(g_f.float(), g_b.float(), x.float(), *w)
    assert got[0].dtype == torch.bfloat16 and torch.equal(got[0], flush_denormals(want[0]).bfloat16())
    for a, b in zip(got[1:], want[1:]):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def flush_denormals(t: torch.Tensor) -> torch.Tensor:
    """float32 ``t`` with its denormals as zero: AVX512-BF16's conversion reads them so (they round to tiny bf16
    denormals otherwise)."""
    return torch.where(t.abs() < torch.finfo(torch.float32).tiny, torch.zeros_like(t), t)


@pytest.mark.parametrize("ndirs", [1, 2])
def test_bfloat16_activation_gradients_are_the_float32_ones_rounded_once(isa, ndirs):
    """With bf16 activations the scan returns the gradients of u, delta and z in bf16: bit for bit the float32
    op's gradients on the same (exactly widened) values, rounded to nearest even once, dL/dz summed over both
    directions in float32 first.  The other gradients are the float32 op's."""
    g = torch.Generator().manual_seed(4)
    batch, length, dim, nstate = 2, 45, 40, 16
    acts = lambda *shape: [torch.randn(*shape, generator=g).bfloat16() for _ in range(ndirs)]  # noqa: E731
    u, delta, B, C = acts(batch, length, dim), acts(batch, length, dim), acts(batch, length, nstate), \
        acts(batch, length, nstate)
    z = torch.randn(batch, length, dim, generator=g).bfloat16()
    A = [-torch.rand(dim, nstate, generator=g) - 0.5 for _ in range(ndirs)]
    D = [torch.randn(dim, generator=g) for _ in range(ndirs)]
    bias = [torch.randn(dim, generator=g) for _ in range(ndirs)]

    def grads(dtype: torch.dtype) -> list[torch.Tensor]:
        """Gradients of u, delta, B, C (per direction), z, then A, D, delta_bias (per direction)."""
        leaves = [[t.to(dtype, copy=True).requires_grad_() for t in group] for group in (u, delta, B, C)]
        zz = z.to(dtype, copy=True).requires_grad_()
        params = [[t.clone().requires_grad_() for t in group] for group in (A, D, bias)]
        out = ops.scan(leaves[0], leaves[1], params[0], leaves[2], leaves[3], params[1], params[2], zz, True)
        assert out.dtype == torch.float32
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(5)))
        return [t.grad for group in leaves for t in group] + [zz.grad] + [t.grad for group in params for t in group]

    got, want = grads(torch.bfloat16), grads(torch.float32)
    for i, (a, b) in enumerate(zip(got, want)):
        if i < 2 * ndirs or i == 4 * ndirs:  # u, delta and z: rounded by the kernel
            assert a.dtype == torch.bfloat16 and torch.equal(a, flush_denormals(b).bfloat16()), i
        elif i < 4 * ndirs:  # B, C: float32 from the kernel, cast by autograd
            assert a.dtype == torch.bfloat16 and torch.equal(a, b.bfloat16()), i
        else:  # A, D, delta_bias
            assert a.dtype == torch.float32 and torch.equal(a, b), i


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_operators_pass_opcheck(dtype):
    """Schema, fake (meta) implementation and autograd registration are consistent (what torch.compile needs)."""
    x = make_inputs(2, 20, 40, 16, z=True, bias=True, skip=True, noncontiguous=False, seed=2)
    cl = lambda t: t.transpose(1, 2).to(dtype).contiguous().requires_grad_()  # noqa: E731
    args = ([cl(x["u"])], [cl(x["delta"])], [x["A"].requires_grad_()], [cl(x["B"])], [cl(x["C"])],
            [x["D"].requires_grad_()], [x["delta_bias"].requires_grad_()], cl(x["z"]), True, True)
    torch.library.opcheck(torch.ops.ssamba_cpu.scan_fwd.default, args)
    conv_args = (cl(x["u"]), torch.randn(20, 4), torch.randn(20), torch.randn(20, 4), torch.randn(20))
    torch.library.opcheck(torch.ops.ssamba_cpu.conv_silu_fwd.default, conv_args)


def test_checkpoints_are_a_fraction_of_the_output():
    """Backward memory: states are kept every CHUNK steps only (N/CHUNK of the output), never per step."""
    x = make_inputs(1, 32, 1000, 16, z=False, bias=False, skip=False, noncontiguous=False, seed=4)
    cl = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731
    out, ckpt = torch.ops.ssamba_cpu.scan_fwd([cl(x["u"])], [cl(x["delta"])], [x["A"]], [cl(x["B"])],
                                              [cl(x["C"])], [None], [None], None, False, True)
    assert ckpt[0].shape == (1, -(-1000 // ops.CHUNK), 16, 32)
    assert ckpt[0].numel() <= out.numel() * 16 / ops.CHUNK + 16 * 32
    _, no_ckpt = torch.ops.ssamba_cpu.scan_fwd([cl(x["u"])], [cl(x["delta"])], [x["A"]], [cl(x["B"])],
                                               [cl(x["C"])], [None], [None], None, False, False)
    assert no_ckpt[0].numel() == 0


@pytest.mark.skipif(not cpu._X86 or shutil.which(os.environ.get("CXX", "c++")) is None,
                    reason="x86 prefetch instructions; needs the C++ compiler that built the kernels")
def test_scan_kernels_keep_their_prefetches(tmp_path):
    """The scans prefetch the rows of the next block-chunk (forward: delta, u, z, B, C, out; backward: the same
    inputs and grad_out, plus the gradient rows it writes).  GCC once deleted every call of the prefetch helper
    (a function of prefetches only looks free of side effects) without a trace but 10-15% of the time; this
    compiles the AVX-512 kernels as the extension does and counts the prefetch instructions per scan kernel."""
    asm = tmp_path / "isa.s"
    flags = [f for f in cpu.CFLAGS if f != "-fopenmp"]
    subprocess.run([os.environ.get("CXX", "c++"), *flags, "-S", "-o", str(asm), str(cpu.CSRC / "isa_avx512.cpp")],
                   check=True, capture_output=True)
    counts: dict[str, int] = {}
    for body in re.split(r"\n(?=_?_Z[\w.]*:\n)", asm.read_text()):
        name = body.split(":", 1)[0]
        for kernel in ("scan_fwd_group", "scan_bwd_group"):
            if kernel in name:
                counts[name] = len(re.findall(r"\bprefetch\w*\s", body))
    fwd = [n for name, n in counts.items() if "scan_fwd_group" in name]
    bwd = [n for name, n in counts.items() if "scan_bwd_group" in name]
    assert fwd and bwd, f"scan kernels not found in the assembly: {sorted(counts)}"
    assert min(fwd) >= 6, f"forward scan lost its prefetches: {counts}"
    assert min(bwd) >= 11, f"backward scan lost its prefetches: {counts}"


def test_isa_selection():
    assert cpu.set_isa("auto") == ISAS[0]
    assert "generic" in ISAS
    with pytest.raises(RuntimeError, match="unknown isa"):
        cpu.set_isa("sse9")


def test_a_build_killed_midway_does_not_block_the_next_process(tmp_path):
    """torch's loader waits for its ``lock`` file to vanish; a killed build leaves it.  The next process must clear
    it (it holds an OS lock, so no live build owns the file) instead of waiting forever."""
    assert cpu.available()
    built = cpu.build_dir()
    assert (built / "ssamba_cpu.so").exists()  # the cache key did not change by loading (torch extends flag lists)
    root = tmp_path / "ext"
    shutil.copytree(built, root / built.name)  # the same build, up to date: loading it is quick
    (root / built.name / "lock").write_text("")  # what a build killed inside torch's loader leaves behind
    code = "import sys; from ssamba.models.scan import cpu; sys.exit(0 if cpu.available() else 3)"
    env = dict(os.environ, SSAMBA_EXT_DIR=str(root))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left by a CPU kernel build that did not finish" in proc.stderr
    assert not (root / built.name / "lock").exists()


def test_failed_build_warns_once_and_falls_back_to_reference(monkeypatch):
    """No compiler: "auto" must still work, through the reference scan, and say so (never silently)."""
    def broken_build():
        raise OSError("no C++ compiler found (simulated)")

    monkeypatch.setattr(cpu, "_build", broken_build)
    cpu._load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not cpu.available()
            u = torch.randn(1, 4, 5)
            assert scan.get_backend(u).name == "reference"
            out = scan.selective_scan(u, torch.rand(1, 4, 5), -torch.ones(4, 2), torch.randn(1, 2, 5),
                                      torch.randn(1, 2, 5))
            assert out.shape == (1, 4, 5)
            with pytest.raises(RuntimeError, match="cannot run"):
                scan.get_backend(u, "cpu")
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "falling back to the pure-PyTorch reference scan" in messages[0]
        assert "simulated" in messages[0]
    finally:
        monkeypatch.undo()
        cpu._load.cache_clear()
        assert cpu.available()
