"""CPU-safe LU linear algebra: right at any thread count, forward and backward.

torch 2.13's batched CPU LU is wrong (or hangs) on more than one thread for matrices larger
than ~150; these tests run at 2 threads with 288 x 288 and 512 x 512 matrices and compare
with numpy, one matrix at a time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gaugeflow.measure import count_graph_nodes
from gaugeflow.physics import linalg
from gaugeflow.physics.dirac import dirac_matrix


@pytest.fixture
def two_threads() -> None:
    torch.set_num_threads(2)  # conftest restores the previous count


def _dirac_batch(generator: torch.Generator, batch: int, L: int) -> torch.Tensor:
    theta = 2 * math.pi * torch.rand(batch, 2, L, L, generator=generator, dtype=torch.float64)
    return dirac_matrix(theta, 0.276)


def _random_batch(generator: torch.Generator, batch: int, n: int, dtype) -> torch.Tensor:
    """Well-conditioned: 2 + a random matrix of spectral radius ~1."""
    real = torch.float64
    M = torch.randn(batch, n, n, generator=generator, dtype=real)
    if dtype.is_complex:
        M = torch.complex(M, torch.randn(batch, n, n, generator=generator, dtype=real)) / 2**0.5
    return 2 * torch.eye(n, dtype=dtype) + M / n**0.5


def _matrices(kind: str, generator: torch.Generator, L: int) -> torch.Tensor:
    batch = 4 if L <= 12 else 3
    if kind == "dirac":
        return _dirac_batch(generator, batch, L)
    dtype = torch.complex128 if kind == "random-complex" else torch.float64
    return _random_batch(generator, batch, 2 * L * L, dtype)


def _check_against_numpy(M: torch.Tensor, generator: torch.Generator) -> None:
    weights = torch.rand(M.shape[0], generator=generator, dtype=torch.float64) + 0.5
    A = M.clone().requires_grad_(True)
    sign, logabsdet = linalg.slogdet(A)
    (logabsdet * weights).sum().backward()
    inverse = linalg.inv(M)
    for b, m in enumerate(M.numpy()):
        ref_sign, ref_logabsdet = np.linalg.slogdet(m)
        ref_inverse = np.linalg.inv(m)
        assert abs(logabsdet[b].item() - ref_logabsdet) < 1e-10, (b, logabsdet[b], ref_logabsdet)
        assert abs(sign[b].item() - ref_sign) < 1e-10, (b, sign[b], ref_sign)
        np.testing.assert_allclose(inverse[b].numpy(), ref_inverse, rtol=0, atol=1e-10)
        # d log|det M| / dM in torch's convention for complex inputs: M^-H
        expected_grad = weights[b].item() * ref_inverse.conj().T
        np.testing.assert_allclose(A.grad[b].numpy(), expected_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["dirac", "random-complex", "random-real"])
@pytest.mark.parametrize("L", [12, 16])
def test_batched_logdet_inverse_and_gradient_match_numpy_on_two_threads(
    two_threads, generator, L, kind
):
    assert torch.get_num_threads() == 2
    _check_against_numpy(_matrices(kind, generator, L), generator)


def test_per_matrix_route_is_right_too(two_threads, generator, monkeypatch):
    monkeypatch.setenv("GAUGEFLOW_CPU_LINALG", "per_matrix")
    assert linalg.cpu_route() == "per_matrix"
    _check_against_numpy(_dirac_batch(generator, 3, 12), generator)


def test_solve_matches_numpy_on_two_threads(two_threads, generator):
    A = _matrices("dirac", generator, 12)
    B = torch.randn(A.shape[0], A.shape[-1], 3, generator=generator, dtype=torch.float64)
    X = linalg.solve(A, B.to(A.dtype))
    for b in range(A.shape[0]):
        expected = np.linalg.solve(A[b].numpy(), B[b].numpy())
        np.testing.assert_allclose(X[b].numpy(), expected, rtol=0, atol=1e-10)


def test_measurement_helpers_match_numpy(two_threads, generator):
    M = _matrices("dirac", generator, 12)
    LU, pivots = linalg.lu_factor(M)
    sign, logabsdet = linalg.slogdet_from_lu(LU, pivots)
    inverse = linalg.lu_solve(LU, pivots, torch.eye(M.shape[-1], dtype=M.dtype).expand_as(M))
    for b, m in enumerate(M.numpy()):
        ref_sign, ref_logabsdet = np.linalg.slogdet(m)
        assert abs(logabsdet[b].item() - ref_logabsdet) < 1e-10
        assert abs(sign[b].item() - ref_sign) < 1e-10
        np.testing.assert_allclose(inverse[b].numpy(), np.linalg.inv(m), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradients_match_finite_differences(generator, dtype):
    M = _random_batch(generator, 2, 4, dtype).requires_grad_(True)
    B = torch.randn(2, 4, 2, generator=generator, dtype=torch.float64).to(dtype)
    B.requires_grad_(True)
    if dtype.is_complex:  # the phase of det M is differentiable too
        assert torch.autograd.gradcheck(linalg.slogdet, (M,))
    else:
        assert torch.autograd.gradcheck(lambda m: linalg.slogdet(m)[1], (M,))
    assert torch.autograd.gradcheck(linalg.inv, (M,))
    assert torch.autograd.gradcheck(linalg.solve, (M, B))
    # second derivatives, e.g. for gradient estimators that differentiate a gradient
    assert torch.autograd.gradgradcheck(lambda m: linalg.slogdet(m)[1], (M,))
    assert torch.autograd.gradgradcheck(linalg.solve, (M, B))


def test_negative_determinant_sign(generator):
    M = _random_batch(generator, 2, 6, torch.float64)
    M[1, [0, 1]] = M[1, [1, 0]]  # a row swap flips the sign
    sign, logabsdet = linalg.slogdet(M)
    ref = [np.linalg.slogdet(m) for m in M.numpy()]
    np.testing.assert_array_equal(sign, [r[0] for r in ref])
    np.testing.assert_allclose(logabsdet, [r[1] for r in ref], atol=1e-12)
    assert sign[1] == -sign[0]


@pytest.mark.parametrize("threads", [1, 2])
def test_one_graph_node_per_call_whatever_the_batch(generator, threads):
    torch.set_num_threads(threads)
    counts = []
    for batch in (1, 7):
        M = _random_batch(generator, batch, 160, torch.complex64).requires_grad_(True)
        # leaf (AccumulateGrad) -> slogdet -> sum; inv and solve have one more (abs)
        counts.append(count_graph_nodes(linalg.slogdet(M)[1].sum()))
        counts.append(count_graph_nodes(linalg.inv(M).abs().sum()) - 1)
        counts.append(count_graph_nodes(linalg.solve(M, M.detach()[..., :2]).abs().sum()) - 1)
    assert counts == [3] * 6, counts


def test_works_in_inference_mode(generator):
    M = _random_batch(generator, 3, 20, torch.complex128)
    with torch.inference_mode():
        sign, logabsdet = linalg.slogdet(M)
    np.testing.assert_allclose(logabsdet, [np.linalg.slogdet(m)[1] for m in M.numpy()])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(3, 4), "square"),
        (torch.zeros(4), "square"),
        (torch.zeros(2, 3, 3, dtype=torch.int64), "floating-point or complex"),
        (np.eye(3), "torch.Tensor"),
    ],
)
def test_bad_matrices_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        linalg.slogdet(bad)


def test_bad_right_hand_side_raises_value_error():
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, k\]"):
        linalg.solve(torch.eye(3), torch.ones(4, 1))
    with pytest.raises(ValueError, match="dtype"):
        linalg.solve(torch.eye(3), torch.ones(3, 1, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_the_batched_path_and_matches_numpy(generator):
    M = _dirac_batch(generator, 3, 12)
    sign, logabsdet = linalg.slogdet(M.cuda())
    assert "Slogdet" in type(logabsdet.grad_fn).__name__ or logabsdet.grad_fn is None
    ref = [np.linalg.slogdet(m)[1] for m in M.numpy()]
    np.testing.assert_allclose(logabsdet.cpu(), ref, atol=1e-10)


# --- the hazard itself -----------------------------------------------------------------------

_WATCHDOG_S = 3
_NAIVE_CHILD = textwrap.dedent(
    f"""
    import faulthandler, json, math
    import numpy as np, torch
    from gaugeflow.physics import linalg
    from gaugeflow.physics.dirac import dirac_matrix

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    theta = 2 * math.pi * torch.rand(4, 2, 12, 12, generator=g, dtype=torch.float64)
    M = dirac_matrix(theta, 0.276)
    reference = np.array([np.linalg.slogdet(m)[1] for m in M.numpy()])
    assert np.all(np.isfinite(reference))  # none is singular: a "U is zero" error is wrong too
    assert linalg.cpu_route() == "plain"
    print("READY", flush=True)
    faulthandler.dump_traceback_later({_WATCHDOG_S}, exit=True)  # the naive call may hang
    logabsdet = linalg.slogdet(M)[1].numpy()
    print("RESULT", json.dumps(float(np.max(np.abs(logabsdet - reference)))), flush=True)
    """
)


def test_naive_batched_call_is_wrong_on_two_threads():
    """The same comparison fails with the plain batched torch call (GAUGEFLOW_CPU_LINALG=plain).

    Run in a child process: on this machine the naive call prints an MKL "?LASWP" error and
    then either returns wrong numbers, hangs, or declares a nonsingular matrix singular
    ("U[288,288] is zero", seen in CI on an AVX2-only AMD EPYC); a watchdog ends a hung child.
    """
    env = dict(os.environ, GAUGEFLOW_CPU_LINALG="plain", OMP_NUM_THREADS="2")
    child = subprocess.run(
        [sys.executable, "-c", _NAIVE_CHILD],
        capture_output=True,
        text=True,
        env=env,
        timeout=_WATCHDOG_S + 120,
    )
    assert "READY" in child.stdout, f"child failed before the naive call:\n{child.stderr}"
    results = [line for line in child.stdout.splitlines() if line.startswith("RESULT")]
    if not results:
        # it died, hung or called a nonsingular matrix singular inside the call: the hazard,
        # seen as a failure rather than numbers
        assert child.returncode != 0
        signs = ("LASWP", "Timeout", "is zero and using it on lu_solve")
        assert any(sign in child.stderr for sign in signs), child.stderr[-2000:]
        return
    error = json.loads(results[0].split(maxsplit=1)[1])
    if error < 1e-6:
        pytest.skip(f"the naive batched LU happened to be right here (max error {error:.1e})")
    assert error > 1e-6
