"""Dense LU-based linear algebra that stays correct on CPU at any thread count.

torch 2.13's batched CPU LU (behind ``torch.linalg.slogdet``, ``inv``, ``solve``, ``det``,
``lu_factor`` and the slogdet backward) returns wrong pivots when torch runs on more than one
thread and the matrices are larger than about 150 (pytorch issue 142815): MKL reports
"Parameter 6 was incorrect on entry to ?LASWP" and the call either hangs or returns wrong
numbers. Unbatched calls, and batched calls on a single thread, are correct.

On CPU with more than one thread every factorisation here runs as one batched call with torch
(and MKL) switched to a single thread for its duration. benchmarks/bench_linalg.py compares
this with factorising matrix by matrix (MKL threading inside each), batch 64, complex64 Dirac
matrices, 2 threads: on a quiet 2-core machine the single-thread call was as fast or up to
25% faster at L = 8, 12, 16; on a loaded one (load average ~7) matrix by matrix was 5-30x
slower, its threads waiting for each other. ``GAUGEFLOW_CPU_LINALG=per_matrix`` selects the
other route (it touches no global thread setting and may win on many idle cores at large L).
Other devices (CUDA) use the plain batched calls.

The differentiable functions (`slogdet`, `inv`, `solve`) are single autograd nodes on CPU,
whatever the batch size. `lu_factor`, `lu_solve` and `slogdet_from_lu` are for measurements
and carry no gradient.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import torch

__all__ = [
    "cpu_route",
    "lu_factor",
    "lu_solve",
    "slogdet_from_lu",
    "slogdet",
    "inv",
    "solve",
]

#: The CPU route when torch uses more than one thread: "single_thread" (one batched call with
#: torch and MKL switched to one thread for its duration) or "per_matrix" (unbatched LAPACK
#: calls in a loop, MKL threading inside each). GAUGEFLOW_CPU_LINALG overrides it; "plain"
#: (the plain batched call) exists for benchmarks and tests of the hazard only.
_DEFAULT_ROUTE = "single_thread"
# serialises the thread-count switch between Python threads that call into this module
_THREAD_LOCK = threading.Lock()
_ROUTES = ("per_matrix", "single_thread", "plain")


def cpu_route() -> str:
    """The route CPU factorisations take now ("plain" when torch runs on one thread)."""
    if torch.get_num_threads() == 1:
        return "plain"
    route = os.environ.get("GAUGEFLOW_CPU_LINALG", _DEFAULT_ROUTE)
    if route not in _ROUTES:
        raise ValueError(f"GAUGEFLOW_CPU_LINALG must be one of {_ROUTES}; got {route!r}")
    return route


def _check_square(M: torch.Tensor, name: str = "matrix") -> None:
    if not isinstance(M, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [..., n, n]; got {type(M)}")
    if M.dim() < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"{name} must have shape [..., n, n] (square); got {tuple(M.shape)}")
    if not (M.is_floating_point() or M.is_complex()):
        raise ValueError(f"{name} must be a floating-point or complex tensor; got {M.dtype}")


def _check_rhs(A: torch.Tensor, B: torch.Tensor) -> None:
    if not isinstance(B, torch.Tensor) or B.dim() < 2 or B.shape[-2] != A.shape[-1]:
        shape = tuple(B.shape) if isinstance(B, torch.Tensor) else type(B)
        raise ValueError(f"right-hand side must have shape [..., {A.shape[-1]}, k]; got {shape}")
    if B.dtype != A.dtype or B.device != A.device:
        raise ValueError(
            f"right-hand side must match the matrix's dtype {A.dtype} and device {A.device}; "
            f"got {B.dtype} on {B.device}"
        )


def _per_matrix(fn: Callable[..., tuple[torch.Tensor, ...]], *args: torch.Tensor) -> tuple:
    """Apply fn (returning a tuple of tensors) to one matrix at a time and restack."""
    batch = torch.broadcast_shapes(*(a.shape[:-2] for a in args))
    flat = [a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:]) for a in args]
    count = flat[0].shape[0]
    if count == 0:
        return fn(*args)
    pieces = [fn(*(f[i] for f in flat)) for i in range(count)]
    return tuple(
        torch.stack([p[j] for p in pieces]).reshape(*batch, *pieces[0][j].shape)
        for j in range(len(pieces[0]))
    )


def _single_thread(fn: Callable[..., tuple[torch.Tensor, ...]], *args: torch.Tensor) -> tuple:
    with _THREAD_LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(threads)


def _route(fn: Callable[..., tuple[torch.Tensor, ...]], *args: torch.Tensor) -> tuple:
    """Run a LAPACK-backed torch call the way that is safe on this device and thread count."""
    if args[0].device.type != "cpu":
        return fn(*args)
    route = cpu_route()
    if route == "plain" or all(a.dim() == 2 for a in args):
        return fn(*args)
    if route == "per_matrix":
        return _per_matrix(fn, *args)
    return _single_thread(fn, *args)


def _lu_factor_raw(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _route(lambda a: tuple(torch.linalg.lu_factor(a)), M)


def _lu_solve_raw(
    LU: torch.Tensor, pivots: torch.Tensor, B: torch.Tensor, adjoint: bool = False
) -> torch.Tensor:
    # pivots travel as [..., n, 1] so that every argument has two trailing matrix dims
    def one(lu: torch.Tensor, piv: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.linalg.lu_solve(lu, piv[..., 0], b, adjoint=adjoint),)

    (X,) = _route(one, LU, pivots[..., None], B)
    return X


def _identity_like(M: torch.Tensor) -> torch.Tensor:
    n = M.shape[-1]
    return torch.eye(n, dtype=M.dtype, device=M.device).expand(*M.shape[:-2], n, n)


def lu_factor(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LU factors (packed) and 1-based pivots of a batch of square matrices; no gradient."""
    _check_square(M)
    with torch.no_grad():
        return _lu_factor_raw(M.detach())


def lu_solve(LU: torch.Tensor, pivots: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Solve M X = B from the factors of `lu_factor`; no gradient."""
    _check_square(LU, "LU factors")
    _check_rhs(LU, B)
    with torch.no_grad():
        return _lu_solve_raw(LU.detach(), pivots, B.detach())


def slogdet_from_lu(LU: torch.Tensor, pivots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign, log|det|) from LU factors: sign is +-1 (real) or a unit phase (complex)."""
    _check_square(LU, "LU factors")
    diag = LU.diagonal(dim1=-2, dim2=-1)
    n = LU.shape[-1]
    steps = torch.arange(1, n + 1, device=pivots.device, dtype=pivots.dtype)
    swaps = (pivots != steps).sum(-1)
    parity = 1.0 - 2.0 * (swaps % 2).to(diag.real.dtype)
    absdiag = diag.abs()
    logabsdet = torch.log(absdiag).sum(-1)
    unit = torch.where(absdiag > 0, diag / torch.where(absdiag > 0, absdiag, 1), 0)
    sign = parity.to(diag.dtype) * unit.prod(-1)
    return sign, logabsdet


class _SlogdetCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        LU, pivots = _lu_factor_raw(M)
        sign, logabsdet = slogdet_from_lu(LU, pivots)
        ctx.save_for_backward(M, LU, pivots, sign)
        if not M.is_complex():
            ctx.mark_non_differentiable(sign)
        return sign, logabsdet

    @staticmethod
    def backward(ctx, g_sign: torch.Tensor | None, g_logabsdet: torch.Tensor | None):
        M, LU, pivots, sign = ctx.saved_tensors
        # d log|det M| = Re tr(M^-1 dM); d arg det M = Im tr(M^-1 dM). With the real-valued
        # coefficient c below, torch's gradient convention gives grad_M = conj(c) M^-H.
        c = torch.zeros_like(sign) if g_logabsdet is None else g_logabsdet.to(sign.dtype)
        if M.is_complex() and g_sign is not None:
            c = c - 1j * (sign.conj() * g_sign).imag
        if torch.is_grad_enabled():  # double backward requested: stay differentiable
            inverse = inv(M)
        else:
            inverse = _lu_solve_raw(LU, pivots, _identity_like(M))
        return c.conj()[..., None, None] * inverse.mH


class _InvCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, M: torch.Tensor) -> torch.Tensor:
        LU, pivots = _lu_factor_raw(M)
        out = _lu_solve_raw(LU, pivots, _identity_like(M))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        adj = out.mH
        return -(adj @ grad @ adj)


class _SolveCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        LU, pivots = _lu_factor_raw(A.expand(*batch, *A.shape[-2:]))
        X = _lu_solve_raw(LU, pivots, B.expand(*batch, *B.shape[-2:]))
        # A (an input) and X (the output) stay linked to the graph for double backward;
        # the LU factors are constants, used only on the plain first-order path
        ctx.save_for_backward(A, LU, pivots, X)
        ctx.shapes = (A.shape, B.shape)
        return X

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        A, LU, pivots, X = ctx.saved_tensors
        if torch.is_grad_enabled():
            grad_b = solve(A.mH, grad)
        else:
            grad_b = _lu_solve_raw(LU, pivots, grad, adjoint=True)
        a_shape, b_shape = ctx.shapes
        grad_a = -(grad_b @ X.mH).sum_to_size(a_shape) if ctx.needs_input_grad[0] else None
        return grad_a, (grad_b.sum_to_size(b_shape) if ctx.needs_input_grad[1] else None)


def slogdet(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign, log|det M|) of a batch of square matrices, differentiable.

    For a real matrix sign is +-1 and carries no gradient; for a complex one it is the
    unit phase det M / |det M|.
    """
    _check_square(M)
    if M.device.type != "cpu":
        return torch.linalg.slogdet(M)
    return _SlogdetCPU.apply(M)


def inv(M: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of square matrices, differentiable."""
    _check_square(M)
    if M.device.type != "cpu":
        return torch.linalg.inv(M)
    return _InvCPU.apply(M)


def solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """X with A X = B for a batch of square A and B of shape [..., n, k], differentiable."""
    _check_square(A)
    _check_rhs(A, B)
    if A.device.type != "cpu":
        return torch.linalg.solve(A, B)
    return _SolveCPU.apply(A, B)
