"""Pure-PyTorch Mamba-1 selective scan: the oracle every other backend is tested against.

Semantics and layout follow mamba_ssm's ``selective_scan_fn`` (spec §5)::

    delta <- softplus(delta + delta_bias)             (if delta_softplus)
    s_0 = 0;  s_l = exp(delta_l * A) * s_{l-1} + delta_l * u_l * B_l
    y_l = <s_l, C_l> + D * u_l;   y <- y * silu(z)     (if z is given)

The time recurrence is a Python loop over ``unbind``-ed steps.  Indexing ``x[..., l]`` inside the loop would make
autograd's backward O(L^2) (each index's backward materialises a full-size zero tensor); ``unbind`` produces all
views in one node.  The per-step decays are computed a chunk of steps at a time, so memory for intermediates stays
O(chunk) apart from what autograd must keep.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK = 128


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Selective scan. u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,). Returns (B, D, L).

    Computes in float32 (or float64 when any input is float64) and returns in ``u``'s dtype.
    """
    out_dtype = u.dtype
    wide = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype) else torch.float32
    u, delta, A, B, C = (t.to(wide) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(wide)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    with flush_denormals():
        y = _scan(u, delta, A, B, C)
    if D is not None:
        y = y + D.to(wide)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(wide))
    return y.to(out_dtype)


def _scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    batch, dim, length = u.shape
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for start in range(0, length, _CHUNK):
        sl = slice(start, min(start + _CHUNK, length))
        d_c, u_c, b_c, c_c = delta[:, :, sl], u[:, :, sl], B[:, :, sl], C[:, :, sl]
        decay = torch.exp(d_c.unsqueeze(-1) * A[:, None, :])  # (B, D, c, N)
        drive = (d_c * u_c).unsqueeze(-1) * b_c.transpose(1, 2).unsqueeze(1)  # (B, D, c, N)
        states = []
        for decay_l, drive_l in zip(decay.unbind(2), drive.unbind(2)):
            state = decay_l * state + drive_l
            states.append(state)
        ys.append(torch.einsum("bdln,bnl->bdl", torch.stack(states, dim=2), c_c))
    return torch.cat(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)


_flush_depth = 0


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block (re-entrant).

    Decaying states (``exp(delta * A)`` products) reach the denormal range, where x86 arithmetic is 10-20x slower;
    values that small (< 1.2e-38) do not change any output.  torch has no getter for this process-wide flag: it is
    assumed off outside (its default), and only the outermost block switches it back off.
    """
    global _flush_depth
    if _flush_depth == 0 and not torch.set_flush_denormal(True):  # unsupported CPU: nothing to do
        yield
        return
    _flush_depth += 1
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)
