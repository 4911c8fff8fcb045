"""Bidirectional Mamba mixer ("bimamba v2" of Vision Mamba, spec §5).

One mixer scans the sequence in both directions with separate conv/x_proj/dt_proj/A/D parameters per direction,
shares ``in_proj`` (hence the gate ``z``) and ``out_proj``, and averages the two directions before ``out_proj``.
Parameter names equal the official state dict so released weights load without renaming.

Two code paths compute the same function.  With the "cpu" scan backend the mixer runs fused: the channels-last
matmul outputs go straight into two C++ ops (both directions' conv + SiLU in one pass; both directions' scans with
softplus, D skip, z gate and the average in another), with no transposes or flips; when no gradient is wanted the
whole mixer, matmuls included, is a single C++ call (``ops.mixer``), which saves ~25 Python-level dispatches, and
on two threads ``run_pair`` runs the two mixers of a block pair side by side (``ops.mixer_pair``).
Backends that scan backwards in time natively (triton) run ``_forward_flip_free``: the backward direction is an
anti-causal conv and a reverse scan on the unflipped activations, and the activations stay channels-first (batched
matmuls), which saves the flips and every transposition copy of the step-by-step path; for inference with a
"serial" launch shape (set, or timed faster on the GPU at hand: ``triton_pair.mixer_config``) its two directions
run together (``triton_pair``: one conv launch, one scan launch averaging in the kernel).  Every other backend
(the reference oracle, mamba_ssm on CUDA) runs the step-by-step path, which mirrors spec §5 line by line.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssamba.models.scan import cpu as cpu_limits
from ssamba.models.scan import get_backend, selective_scan, triton_conv, triton_pair
from ssamba.models.scan.triton_ops import ALIGN as SCAN_ALIGN
from ssamba.models.scan.triton_ops import TritonConfig, selective_scan_triton


def _param(module: nn.Module, name: str) -> Tensor:
    """``getattr(module, name)`` for a parameter, without ``nn.Module.__getattr__``'s cost when it is a plain one."""
    p = module._parameters.get(name)
    return p if p is not None else getattr(module, name)


class BiMambaMixer(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, scan_backend: str | None = None) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.scan_backend = scan_backend
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        e, n, r = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * e, bias=False)
        # Only weight and bias of the convolutions are used (by the causal conv below), never the modules' forward.
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1)
        self.conv1d_b = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.x_proj_b = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.dt_proj_b = nn.Linear(r, e, bias=True)
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1)  # S4D-real init
        self.A_log = nn.Parameter(a_log.clone())
        self.A_b_log = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(e))
        self.D_b = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d_model, bias=False)
        self._init_dt(dt_min, dt_max, dt_init_floor)

    def _init_dt(self, dt_min: float, dt_max: float, floor: float) -> None:
        """Mamba's dt init for the forward direction only; the backward one keeps Linear defaults (spec §9, Q14)."""
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

    def forward(self, hidden: Tensor, reverse: bool = False) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model).

        ``reverse=True`` computes ``mixer(hidden.flip(1)).flip(1)`` (the second block of an SSAMBA pair) without
        materialising the flips on the fused path: time-reversing the input swaps which parameter set scans
        forward in time, and every other step is per token.
        """
        backend = get_backend(hidden, self.scan_backend, self.d_state)
        if backend.name == "cpu" and self._fused_cpu(hidden):
            return self._forward_fused(hidden, reverse)
        if backend.reverses:
            return self._forward_flip_free(hidden, reverse)
        if reverse:
            return self._forward_reference(hidden.flip(1)).flip(1)
        return self._forward_reference(hidden)

    def _fused_cpu(self, hidden: Tensor) -> bool:
        """Whether the fused CPU ops take this call: the cpu backend, and float32 or bf16 weights (their matmuls
        run in the weights' dtype or autocast's; a float16 model goes step by step, its scans still on the cpu
        kernels)."""
        return (self.out_proj.weight.dtype in (torch.float32, torch.bfloat16) and self.d_conv <= cpu_limits.MAX_CONV
                and get_backend(hidden, self.scan_backend, self.d_state).name == "cpu")

    def _forward_reference(self, hidden: Tensor) -> Tensor:
        """Spec §5 step by step (any scan backend): the oracle of the fused path."""
        xz = F.linear(hidden, self.in_proj.weight).transpose(1, 2)  # (B, 2E, L)
        y_f = self._branch(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y_b = self._branch(xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        y = (y_f + y_b.flip(-1)).transpose(1, 2) / 2
        return F.linear(y, self.out_proj.weight)

    def _forward_flip_free(self, hidden: Tensor, reverse: bool = False) -> Tensor:
        """``_forward_reference`` without flips or transposed copies: each parameter set scans its own direction
        of the unflipped sequence (``reverse`` swaps the directions, as the time-reversed input would).

        Activations stay channels-first, ``(B, C, L)`` with time contiguous as the scan kernels read them: every
        projection is a batched matmul on that layout (cuBLAS takes the transposed input and weight as they are),
        so nothing is copied to change layout.  On an H200 at 22k tokens the transposition copies of the
        channels-last formulation were ~20% of SSAMBA-tiny's inference time.

        The sequence is padded once, here, to a multiple of ``SCAN_ALIGN`` steps that are identity steps of both
        scans (zero input, so zero x and z, and delta set to -inf before the softplus, i.e. 0 after it): the triton
        scan needs that length to compile to its fast form and would otherwise pad u, delta, z and its output on
        every call (``triton_ops._SelectiveScan``)."""
        e, length = self.d_inner, hidden.shape[1]
        w_in = _param(self.in_proj, "weight")
        h_t = hidden.transpose(1, 2)  # (B, d_model, L) view
        padded = -(-length // SCAN_ALIGN) * SCAN_ALIGN
        if padded != length:
            h_t = F.pad(h_t, (0, padded - length))
        mods = self._modules
        on_triton = get_backend(h_t, self.scan_backend, self.d_state).name == "triton"
        sets = [(mods["conv1d"], mods["x_proj"], mods["dt_proj"], _param(self, "A_log"), _param(self, "D"), reverse),
                (mods["conv1d_b"], mods["x_proj_b"], mods["dt_proj_b"], _param(self, "A_b_log"), _param(self, "D_b"),
                 not reverse)]
        w_out = _param(self.out_proj, "weight").t()
        config = (triton_pair.mixer_config(h_t, e, self.dt_rank + 2 * self.d_state, self.d_state)
                  if on_triton and not self._wants_grad(hidden) else None)  # None: each scan's own
        if config is not None and config.algo == "serial":
            # inference: in_proj as one matmul (the scan reads z with its batch stride), both directions' convs in
            # one launch, their scans in another, averaged in the kernel (the set scanning forward in time first)
            xz = _bmm(w_in, h_t)  # (B, 2E, L)
            first, second = sets[::-1] if reverse else sets
            convs = [_conv_params(c[0]) for c in (first, second)]
            u_first, u_second = triton_conv.conv_silu_pair(xz[:, :e], *convs).unbind(0)
            y = triton_pair.scan_pair(self._direction(u_first, *first[1:5]), self._direction(u_second, *second[1:5]),
                                      xz[:, e:], length, config)
            return _bmm(y[..., :length].transpose(1, 2), w_out)
        x, z = _bmm(w_in[:e], h_t), _bmm(w_in[e:], h_t)  # (B, E, L) each
        y = self._branch_channels_first(x, z, *sets[0], length=length, on_triton=on_triton, config=config)
        y += self._branch_channels_first(x, z, *sets[1], length=length, on_triton=on_triton, config=config)
        # (y / 2) W_out^T as (y^T W_out^T) / 2: the halving is exact, and the output is the smaller tensor
        return _bmm(y[..., :length].transpose(1, 2), w_out).mul_(0.5)

    def _projections(self, u: Tensor, x_proj: nn.Linear) -> tuple[Tensor, Tensor, Tensor]:
        """``(dt, B, C)``: views of the x_proj matmul's ``(B, R + 2N, L)`` output for ``(B, E, L)`` inputs ``u``."""
        x_dbl = _bmm(_param(x_proj, "weight"), u)
        return x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=1)

    def _direction(self, u: Tensor, x_proj: nn.Linear, dt_proj: nn.Linear, a_log: Tensor,
                   d_skip: Tensor) -> triton_pair.Direction:
        """One direction's inputs of ``triton_pair.scan_pair`` (inference) from its conv output ``u``."""
        dt, b, c = self._projections(u, x_proj)
        return triton_pair.Direction(u, dt, b, c, a_log, d_skip, _param(dt_proj, "bias"), _param(dt_proj, "weight"))

    def _branch_channels_first(self, x: Tensor, z: Tensor, conv: nn.Conv1d, x_proj: nn.Linear,
                               dt_proj: nn.Linear, a_log: Tensor, d_skip: Tensor, backwards: bool,
                               length: int, on_triton: bool, config: TritonConfig | None = None) -> Tensor:
        """``_branch`` on ``(B, E, L)`` activations with batched matmuls; (dt, B, C) stay views of one
        ``(B, R + 2N, L)`` projection, which the scan reads with their strides.  Steps from ``length`` on are
        padding (zero x and z): their delta is set to -inf (on triton: ``valid_length``), so they are identity steps
        of the scan.  ``on_triton``: the scan backend is "triton", which takes dt_proj as its factors, at launch
        shape ``config`` (None: the scan's own choice)."""
        conv_w, conv_b = _conv_params(conv)
        if triton_conv.supports(x):  # CUDA: conv + SiLU in one Triton pass
            u = triton_conv.conv_silu(x, conv_w, conv_b, backwards)
        else:
            u = triton_conv.conv_silu_reference(x, conv_w, conv_b, backwards)
        dt, b, c = self._projections(u, x_proj)
        w_dt = _param(dt_proj, "weight")
        if not on_triton:
            delta = _bmm(w_dt, dt)  # (B, E, L); the bias goes in as delta_bias
            if length != x.shape[-1]:  # softplus(-inf + bias) = 0: the state passes through
                delta.narrow(-1, length, x.shape[-1] - length).fill_(float("-inf"))
        with _no_autocast(x.device.type):  # the scan computes in float32 (see _branch)
            a, d_skip, bias = -torch.exp(_float32(a_log)), _float32(d_skip), _float32(_param(dt_proj, "bias"))
            if on_triton:  # delta = W_dt dt as factors: the serial forward computes it in the kernel for inference
                return selective_scan_triton(u, None, a, b, c, d_skip, z, bias, True, backwards,
                                             delta_proj=(w_dt, dt), valid_length=length, config=config)
            return selective_scan(u, delta, a, b, c, D=d_skip, z=z, delta_bias=bias, delta_softplus=True,
                                  backend=self.scan_backend, reverse=backwards)

    def _forward_fused(self, hidden: Tensor, reverse: bool = False) -> Tensor:
        """The same computation through the fused CPU ops, on channels-last activations.

        The ops read float32 or bfloat16 activations (under bf16 autocast the matmul outputs stay bf16: no cast
        passes) and compute in float32, like mamba_ssm's kernels.
        """
        from ssamba.models.scan import ops

        hidden, autocast = self._matmul_input(hidden)
        params = self._mixer_args(reverse)
        if self._inference_op_fits(hidden):
            # inference: the whole mixer in one call (the same matmuls and kernels without ~25 Python-level calls)
            return ops.mixer(hidden, *params, cast_weights=autocast)
        w_in, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, a_log, d_skip, w_out = params
        e, n, r = self.d_inner, self.d_state, self.dt_rank
        act = lambda t: t if t.dtype in (torch.float32, torch.bfloat16) else t.float()  # noqa: E731
        # in_proj in two halves: x is dead once convolved, before z is made (one (B, L, E) less at the peak)
        w_x, w_z = w_in.split([e, e], dim=0)
        x_f, x_b = ops.conv_silu_bidir(
            act(F.linear(hidden, w_x)), conv_w[0].float().view(e, -1), conv_b[0].float(),
            conv_w[1].float().view(e, -1), conv_b[1].float(),
        )
        dbl = [F.linear(u, w).to(x_f.dtype).split([r, n, n], dim=-1) for u, w in zip((x_f, x_b), x_proj_w)]
        z = act(F.linear(hidden, w_z))
        y = ops.scan(
            [x_f, x_b],
            [_narrow_linear(d[0], w).to(x_f.dtype) for d, w in zip(dbl, dt_proj_w)],
            [-torch.exp(a.float()) for a in a_log],
            [d[1] for d in dbl], [d[2] for d in dbl],
            [t.float() for t in d_skip],
            [t.float() for t in dt_bias],
            z, True,
        )  # (B, L, E) float32: silu(z) * (y_f + y_b) / 2
        return F.linear(y.to(w_out.dtype), w_out)

    @staticmethod
    def _matmul_input(hidden: Tensor) -> tuple[Tensor, bool]:
        """``hidden`` in the dtype the matmuls run in, and whether autocast is on: under autocast it is cast once
        here, not once per in_proj half (autocast casts every call's input)."""
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            return hidden.to(torch.get_autocast_dtype(device)), True
        return hidden, False

    def _inference_op_fits(self, hidden: Tensor) -> bool:
        """Whether ``ops.mixer`` can compute this call (``hidden`` as ``_matmul_input`` returns it)."""
        return hidden.dtype in (torch.float32, torch.bfloat16) and not self._wants_grad(hidden)

    def _mixer_args(self, reverse: bool) -> tuple:
        """The parameters in ``ops.mixer``'s order, per-direction lists with the set scanning forward in time first
        (``reverse`` swaps them).  Read from the module dicts directly: ``nn.Module.__getattr__`` costs ~0.8 us per
        lookup, and these 22 lookups were a third of a short clip's mixer call (a parametrized weight, which is not
        in the dict, still comes through getattr)."""
        mods = self._modules
        sets = [(mods["conv1d"], mods["x_proj"], mods["dt_proj"], _param(self, "A_log"), _param(self, "D")),
                (mods["conv1d_b"], mods["x_proj_b"], mods["dt_proj_b"], _param(self, "A_b_log"), _param(self, "D_b"))]
        fwd, bwd = sets[::-1] if reverse else sets
        return (_param(mods["in_proj"], "weight"), [_param(fwd[0], "weight"), _param(bwd[0], "weight")],
                [_param(fwd[0], "bias"), _param(bwd[0], "bias")],
                [_param(fwd[1], "weight"), _param(bwd[1], "weight")],
                [_param(fwd[2], "weight"), _param(bwd[2], "weight")], [_param(fwd[2], "bias"), _param(bwd[2], "bias")],
                [fwd[3], bwd[3]], [fwd[4], bwd[4]], _param(mods["out_proj"], "weight"))

    def _wants_grad(self, hidden: Tensor) -> bool:
        return torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _branch(self, xz: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
                a_log: Tensor, d_skip: Tensor, backwards: bool = False) -> Tensor:
        """One scan direction: causal conv + SiLU, input-dependent (dt, B, C), selective scan, SiLU(z) gate.

        ``backwards=True`` runs it from the last step to the first on the unflipped input: the conv becomes
        anti-causal (flipped taps, outputs aligned to the left end) and the scan runs in reverse."""
        length, pad = xz.shape[-1], self.d_conv - 1
        x, z = xz.chunk(2, dim=1)
        if backwards:
            x = F.conv1d(x, conv.weight.flip(-1), conv.bias, padding=pad, groups=self.d_inner)[..., pad:]
        else:
            x = F.conv1d(x, conv.weight, conv.bias, padding=pad, groups=self.d_inner)[..., :length]
        x = F.silu(x)
        x_dbl = F.linear(x.transpose(1, 2), x_proj.weight)  # (B, L, R + 2N)
        dt, b, c = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # (B, E, L); bias goes in as delta_bias
        # Scans compute in float32 from low-precision inputs, like mamba_ssm's kernel and the fused path. Under
        # autocast the reference scan's output contraction (an einsum, i.e. bmm) would run in bf16/fp16: even from
        # float32 inputs its result then carries a bf16-sized error (3e-3 relative).
        with torch.autocast(x.device.type, enabled=False):
            return selective_scan(
                x, delta, -torch.exp(a_log.float()), b.transpose(1, 2), c.transpose(1, 2),
                D=d_skip.float(), z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True,
                backend=self.scan_backend, reverse=backwards,
            )


def _conv_params(conv: nn.Conv1d) -> tuple[Tensor, Tensor]:
    """A depthwise conv's (weight, bias), read from its parameter dict."""
    return _param(conv, "weight"), _param(conv, "bias")


def _narrow_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(x, weight)`` for a weight with few input features (dt_proj: 12), with the weight's gradient in
    the fast layout.  F.linear multiplies by the transposed weight, so autograd computes its gradient as
    (out x tokens) @ (tokens x 12), which oneDNN runs at ~40 GFLOP/s on 2 threads; multiplying by a contiguous
    copy of the transpose makes it (12 x tokens) @ (tokens x out): 3-4x faster (SSAMBA-tiny, B=4 x 513 tokens,
    0.34 -> 0.09 ms per call, 48 calls per training step).  The copy is (12, d_inner): negligible."""
    return torch.matmul(x, weight.t().contiguous())


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)`` where autocast is on, else nothing: entering autocast's
    context costs ~20 us of Python per call, 48 times an SSAMBA forward."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _float32(t: Tensor) -> Tensor:
    """``t.float()``, tested in Python first (the op is dispatched even when it returns ``t``)."""
    return t if t.dtype == torch.float32 else t.float()


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` where one operand is a 2-D weight and the other a batch: one strided batched matmul on the
    operands' own layouts (``torch.matmul`` would copy a transposed batch to fold it into a single 2-D matmul)."""
    if a.dim() == 2:
        a = a.expand(b.shape[0], -1, -1)
    else:
        b = b.expand(a.shape[0], -1, -1)
    return torch.bmm(a, b)


# Up to this many (batch, length, d_inner) elements per mixer, the two mixers of a block pair run side by side on a
# 2-thread CPU (run_pair).  Measured on 2 cores, SSAMBA-tiny forward, side by side / one after the other
# (interleaved): B=1 512 tokens (0.2M elements) 0.90-0.92 (bf16 autocast 0.81), B=2 512 tokens 0.97; from ~0.8M
# elements on it stops paying (B=1 2k tokens 0.97, B=4 512 tokens 1.03, B=1 4k tokens 1.06): larger inputs split
# well over the threads op by op, and both mixers' intermediates would be alive at once.
PAIR_MAX_ELEMENTS = 1 << 19


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run forward hooks (which a direct op call would skip)."""
    from torch.nn.modules import module as hooks

    return bool(module._forward_hooks or module._forward_pre_hooks or hooks._global_forward_hooks
                or hooks._global_forward_pre_hooks)


def _side_by_side(first: BiMambaMixer, h_first: Tensor, second: BiMambaMixer, h_second: Tensor) -> bool:
    """run_pair's conditions that need no cast of the inputs (see there)."""
    # not while torch.compile traces: the thread count is no graph value, and the traced ops run the same mixers
    if torch.compiler.is_compiling() or torch.get_num_threads() != 2 or h_first.shape != h_second.shape:
        return False
    if h_first.numel() // first.d_model * first.d_inner > PAIR_MAX_ELEMENTS:
        return False
    pairs = ((first, h_first), (second, h_second))
    return all(type(m) is BiMambaMixer and not has_forward_hooks(m) and m._fused_cpu(h) and not m._wants_grad(h)
               for m, h in pairs)


def pair_input_dtype(first: nn.Module, second: nn.Module, device: torch.device) -> torch.dtype | None:
    """bfloat16 when a block pair's mixers would cast their float32 inputs to it first thing (CPU bf16 autocast,
    plain unhooked mixers): their norms can then be written in bf16 directly (``ops.add_norms``), the same
    values without a cast pass per mixer.  None otherwise."""
    if device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    if torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return None
    if any(type(m) is not BiMambaMixer or has_forward_hooks(m) for m in (first, second)):
        return None
    return torch.bfloat16


def run_pair(first: BiMambaMixer, h_first: Tensor, second: BiMambaMixer, h_second: Tensor) -> tuple[Tensor, Tensor]:
    """``(first(h_first), second(h_second, reverse=True))``: the mixers of an SSAMBA block pair.

    With exactly two CPU threads, for inference on the "cpu" backend and inputs up to ``PAIR_MAX_ELEMENTS``, the
    two run side by side, one per thread (``ops.mixer_pair``; the same numbers bit for bit): each op of a short
    clip's mixer is too small to split well over two threads.  More threads keep the per-op parallelism: one
    mixer per thread would leave the rest idle.  Under ``torch.compile`` the mixers are traced one by one.
    """
    if _side_by_side(first, h_first, second, h_second):
        (x_first, cast), (x_second, _) = first._matmul_input(h_first), second._matmul_input(h_second)
        if first._inference_op_fits(x_first) and second._inference_op_fits(x_second):  # (not: fp16 autocast)
            from ssamba.models.scan import ops

            out = ops.mixer_pair((x_first, x_second), (first._mixer_args(False), second._mixer_args(True)),
                                 cast_weights=cast)
            return out[0], out[1]
    return first(h_first), second(h_second, reverse=True)
