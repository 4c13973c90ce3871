"""Wilson-Dirac operator, fermion action, SchwingerAction and observables.

References are independent: a site-by-site numpy construction of D straight from the
formula, the free field in momentum space, numpy determinants and inverses, and finite
differences for gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gaugeflow.measure import count_graph_nodes
from gaugeflow.physics import dirac, u1
from gaugeflow.physics.action import SchwingerAction
from gaugeflow.physics.observables import OBSERVABLES, measure

SIGMA = [np.array([[0, 1], [1, 0]], complex), np.array([[0, -1j], [1j, 0]], complex)]
SIGMA3 = np.diag([1.0, -1.0]).astype(complex)


def reference_dirac(theta: np.ndarray, kappa: float) -> np.ndarray:
    """D for one configuration theta[2, L, L], entry by entry from the defining formula."""
    L = theta.shape[-1]
    D = np.eye(2 * L * L, dtype=complex)

    def index(x0: int, x1: int) -> int:
        return 2 * ((x0 % L) * L + (x1 % L))

    for x0 in range(L):
        for x1 in range(L):
            x = index(x0, x1)
            for mu in (0, 1):
                step = (1, 0) if mu == 0 else (0, 1)
                up = (x0 + step[0], x1 + step[1])
                down = (x0 - step[0], x1 - step[1])
                # a hop across the time boundary picks up -1 (antiperiodic fermions)
                bc_up = -1 if mu == 0 and up[0] == L else 1
                bc_down = -1 if mu == 0 and down[0] == -1 else 1
                u_here = np.exp(1j * theta[mu, x0, x1])
                u_down = np.exp(1j * theta[mu, down[0] % L, down[1] % L])
                y = index(*up)
                D[x : x + 2, y : y + 2] -= kappa * bc_up * (np.eye(2) - SIGMA[mu]) * u_here
                y = index(*down)
                D[x : x + 2, y : y + 2] -= (
                    kappa * bc_down * (np.eye(2) + SIGMA[mu]) * np.conj(u_down)
                )
    return D


def free_log_abs_det(L: int, kappa: float) -> float:
    """sum_p log det of the 2x2 momentum block, antiperiodic in time."""
    p0 = 2 * np.pi * (np.arange(L) + 0.5) / L
    p1 = 2 * np.pi * np.arange(L) / L
    P0, P1 = np.meshgrid(p0, p1, indexing="ij")
    mass = 1 - 2 * kappa * (np.cos(P0) + np.cos(P1))
    return float(np.log(mass**2 + 4 * kappa**2 * (np.sin(P0) ** 2 + np.sin(P1) ** 2)).sum())


def free_condensate(L: int, kappa: float) -> float:
    """(1/V) Re Tr D^-1 at theta = 0: the block a + i b.sigma has trace of inverse 2a/(a^2+b^2)."""
    p0 = 2 * np.pi * (np.arange(L) + 0.5) / L
    p1 = 2 * np.pi * np.arange(L) / L
    P0, P1 = np.meshgrid(p0, p1, indexing="ij")
    a = 1 - 2 * kappa * (np.cos(P0) + np.cos(P1))
    b2 = 4 * kappa**2 * (np.sin(P0) ** 2 + np.sin(P1) ** 2)
    return float((2 * a / (a**2 + b2)).sum() / L**2)


def _theta(generator: torch.Generator, batch: int, L: int, dtype=torch.float64) -> torch.Tensor:
    return 2 * math.pi * torch.rand(batch, 2, L, L, generator=generator, dtype=dtype)


# --- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assembly", "L"), [("scatter", 2), ("scatter", 3), ("scatter", 4), ("loop", 3), ("loop", 4)]
)
def test_dirac_matrix_matches_site_by_site_reference(generator, assembly, L):
    theta = _theta(generator, 2, L)
    D = dirac.dirac_matrix(theta, 0.27, assembly=assembly)
    assert D.dtype == torch.complex128 and D.shape == (2, 2 * L * L, 2 * L * L)
    for b in range(2):
        np.testing.assert_allclose(
            D[b].numpy(), reference_dirac(theta[b].numpy(), 0.27), atol=1e-14
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", [3, 4, 6])
def test_loop_and_scatter_assemblies_are_identical(generator, dtype, L):
    theta = _theta(generator, 3, L, dtype)
    loop = dirac.dirac_matrix(theta, 0.276, assembly="loop")
    scatter = dirac.dirac_matrix(theta, 0.276, assembly="scatter")
    assert loop.dtype == scatter.dtype == dirac.complex_dtype(theta)
    assert torch.equal(loop, scatter), (loop - scatter).abs().max()


@pytest.mark.parametrize("L", [4, 8])
def test_loop_log_det_and_gradient_equal_the_scatter_ones_in_float64(generator, L):
    """The paper's path (loop, full D) and ours (scatter, even-odd) give one action."""
    theta = _theta(generator, 3, L).requires_grad_(True)
    loop = dirac.fermion_action(theta, 0.276, assembly="loop")
    (g_loop,) = torch.autograd.grad(loop.sum(), theta)
    fast = dirac.fermion_action(theta, 0.276, assembly="scatter")
    (g_fast,) = torch.autograd.grad(fast.sum(), theta)
    reference = [
        -2 * np.linalg.slogdet(reference_dirac(t, 0.276))[1] for t in theta.detach().numpy()
    ]
    np.testing.assert_allclose(loop.detach(), reference, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(loop.detach(), fast.detach(), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(g_loop, g_fast, rtol=1e-9, atol=1e-10)


def test_loop_is_the_papers_method_as_a_whole(generator):
    """loop implies the determinant of the full D; loop with even-odd is refused."""
    assert dirac.resolve_method(None, "loop") == "full"
    assert dirac.resolve_method(None, "scatter") == "eo"
    assert SchwingerAction(2.0, 0.276, assembly="loop").method == "full"
    assert SchwingerAction(2.0, 0.276).method == "eo"
    theta = _theta(generator, 1, 4)
    with pytest.raises(ValueError, match="assembly 'loop' is the paper's implementation"):
        dirac.fermion_action(theta, 0.276, method="eo", assembly="loop")
    with pytest.raises(ValueError, match="method 'full'"):
        SchwingerAction(2.0, 0.276, method="eo", assembly="loop")
    with pytest.raises(ValueError, match="assembly 'loop'"):
        dirac.schur_complement(theta, 0.276, assembly="loop")
    with pytest.raises(ValueError, match="needs L >= 3"):
        dirac.dirac_matrix(_theta(generator, 1, 2), 0.276, assembly="loop")


@pytest.mark.parametrize("method", dirac.METHODS)
@pytest.mark.parametrize("kappa", [0.1, 0.276])
@pytest.mark.parametrize("L", [4, 8])
def test_free_field_log_det_matches_momentum_space(L, kappa, method):
    theta = torch.zeros(1, 2, L, L, dtype=torch.float64)
    action = dirac.fermion_action(theta, kappa, method=method)
    expected = -2 * free_log_abs_det(L, kappa)
    assert abs(action.item() - expected) < 1e-10, (action.item(), expected)


def test_gamma5_hermiticity_and_real_determinant(generator):
    theta = _theta(generator, 3, 4)
    gamma5 = np.kron(np.eye(16), SIGMA3)
    for D in dirac.dirac_matrix(theta, 0.276).numpy():
        np.testing.assert_allclose(gamma5 @ D @ gamma5, D.conj().T, atol=1e-15)
        det = np.linalg.det(D)
        assert abs(det.imag) < 1e-12 * abs(det), det


def test_operator_and_actions_are_gauge_covariant(generator):
    L = 4
    theta = _theta(generator, 2, L)
    alpha = u1.random_gauge(theta, generator=generator)
    transformed = u1.gauge_transform(theta, alpha)
    D = dirac.dirac_matrix(theta, 0.276).numpy()
    D_t = dirac.dirac_matrix(transformed, 0.276).numpy()
    # D'(x, y) = e^{i alpha(x)} D(x, y) e^{-i alpha(y)}
    omega = np.exp(1j * np.repeat(alpha.reshape(2, -1).numpy(), 2, axis=1))
    np.testing.assert_allclose(D_t, omega[:, :, None] * D * omega[:, None, :].conj(), atol=1e-14)
    assert np.abs(D_t - D).max() > 0.1
    np.testing.assert_allclose(np.linalg.det(D_t), np.linalg.det(D), rtol=1e-11)
    for method in dirac.METHODS:
        np.testing.assert_allclose(
            dirac.fermion_action(transformed, 0.276, method=method),
            dirac.fermion_action(theta, 0.276, method=method),
            atol=1e-11,
        )
    obs, obs_t = measure(theta, 2.0, 0.276), measure(transformed, 2.0, 0.276)
    for key in OBSERVABLES:
        np.testing.assert_allclose(obs_t[key], obs[key], atol=1e-11, err_msg=key)


# --- even-odd --------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [2, 4, 6])
def test_schur_complement_equals_dense_block_product(generator, L):
    theta = _theta(generator, 2, L)
    parity = np.array([(x0 + x1) % 2 for x0 in range(L) for x1 in range(L)])
    even = np.flatnonzero(np.repeat(parity == 0, 2))
    odd = np.flatnonzero(np.repeat(parity == 1, 2))
    S = dirac.schur_complement(theta, 0.3)
    for b in range(2):
        D = reference_dirac(theta[b].numpy(), 0.3)
        np.testing.assert_allclose(D[np.ix_(even, even)], np.eye(even.size), atol=0)
        expected = np.eye(odd.size) - D[np.ix_(odd, even)] @ D[np.ix_(even, odd)]
        np.testing.assert_allclose(S[b].numpy(), expected, atol=1e-14)


@pytest.mark.parametrize("L", [2, 4, 6])
def test_even_odd_action_equals_full_action_and_numpy(generator, L):
    theta = _theta(generator, 3, L)
    eo = dirac.fermion_action(theta, 0.276, method="eo")
    full = dirac.fermion_action(theta, 0.276, method="full")
    reference = [-2 * np.linalg.slogdet(reference_dirac(t, 0.276))[1] for t in theta.numpy()]
    np.testing.assert_allclose(eo, reference, atol=1e-10)
    np.testing.assert_allclose(full, reference, atol=1e-10)
    if L >= 3:
        loop = dirac.fermion_action(theta, 0.276, assembly="loop")
        np.testing.assert_allclose(loop, reference, atol=1e-10)


# --- gradients and graph size ----------------------------------------------------------------


@pytest.mark.parametrize(("method", "assembly", "L"), [("eo", "scatter", 2), ("full", "loop", 3)])
def test_fermion_action_gradient_matches_finite_differences(generator, method, assembly, L):
    theta = _theta(generator, 2, L).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: dirac.fermion_action(t, 0.276, method=method, assembly=assembly), (theta,)
    )


def test_scatter_graph_is_constant_and_loop_graph_grows_with_the_volume():
    def nodes(L: int, assembly: str) -> int:
        theta = torch.zeros(1, 2, L, L, requires_grad=True)
        return count_graph_nodes(
            dirac.fermion_action(theta, 0.2, method="full", assembly=assembly).sum()
        )

    assert nodes(4, "scatter") == nodes(6, "scatter")
    # four hops per site: the loop graph adds a fixed number of nodes per block
    growth = nodes(6, "loop") - nodes(4, "loop")
    assert growth > 0 and growth % (4 * (36 - 16)) == 0, growth


def _node_types(out: torch.Tensor) -> dict[str, int]:
    seen, counts, stack = set(), {}, [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        counts[type(fn).__name__] = counts.get(type(fn).__name__, 0) + 1
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return counts


def test_loop_graph_has_the_papers_structure_per_site():
    """Per site: four block assignments (CopySlices, as in the paper's code) and the same
    number of nodes at every L (nodes = c L^2 + b exactly); one determinant of the full D."""

    def types(L: int) -> dict[str, int]:
        theta = torch.zeros(1, 2, L, L, requires_grad=True)
        return _node_types(dirac.fermion_action(theta, 0.2, assembly="loop").sum())

    t4, t8, t12 = types(4), types(8), types(12)
    for L, t in ((4, t4), (8, t8), (12, t12)):
        assert t["CopySlices"] == 4 * L * L, (L, t)
        assert t["_SlogdetCPUBackward"] == 1
        assert "IndexBackward0" not in t and "BmmBackward0" not in t  # no even-odd slicing
    per_site = (sum(t8.values()) - sum(t4.values())) // (64 - 16)
    assert sum(t12.values()) - sum(t8.values()) == per_site * (144 - 64)
    assert 30 <= per_site <= 44, per_site  # the paper: 36 per site


# --- the action ------------------------------------------------------------------------------


def test_schwinger_action_is_gauge_plus_fermion_and_differentiable(generator):
    theta = _theta(generator, 3, 4)
    action = SchwingerAction(2.0, 0.276)
    expected = [
        -2.0 * np.cos(u1.plaquette(t[None]).numpy()).sum()
        - 2 * np.linalg.slogdet(reference_dirac(t.numpy(), 0.276))[1]
        for t in theta
    ]
    np.testing.assert_allclose(action(theta), expected, atol=1e-10)
    np.testing.assert_allclose(action.log_prob(theta), -np.array(expected), atol=1e-10)
    small = _theta(generator, 1, 2).requires_grad_(True)
    assert torch.autograd.gradcheck(action, (small,))


def test_pure_gauge_action_has_no_determinant(generator):
    theta = _theta(generator, 2, 3)  # odd L: no Dirac operator would be valid with eo
    np.testing.assert_allclose(SchwingerAction(1.5, 0.0)(theta), u1.gauge_action(theta, 1.5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": -1.0, "kappa": 0.2}, "beta"),
        ({"beta": float("nan"), "kappa": 0.2}, "beta"),
        ({"beta": 1.0, "kappa": -0.1}, "kappa"),
        ({"beta": 1.0, "kappa": "0.2"}, "kappa"),
        ({"beta": 1.0, "kappa": 0.2, "method": "lu"}, "method must be one of"),
        ({"beta": 1.0, "kappa": 0.2, "assembly": "dense"}, "assembly must be one of"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SchwingerAction(**kwargs)


def test_bad_inputs_raise_value_error(generator):
    with pytest.raises(ValueError, match="float32 or float64"):
        dirac.dirac_matrix(torch.zeros(1, 2, 4, 4, dtype=torch.float16), 0.1)
    with pytest.raises(ValueError, match="even L"):
        dirac.fermion_action(_theta(generator, 1, 3), 0.1, method="eo")
    with pytest.raises(ValueError, match=r"\[batch, 2, L, L\]"):
        dirac.dirac_matrix(torch.zeros(2, 4, 4), 0.1)
    with pytest.raises(ValueError, match="L >= 2"):
        dirac.dirac_matrix(torch.zeros(1, 2, 1, 1), 0.1)


# --- observables -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", dirac.METHODS)
def test_measure_matches_numpy_on_random_configurations(generator, method):
    L, beta, kappa = 4, 1.3, 0.276
    theta = _theta(generator, 3, L)
    obs = measure(theta, beta, kappa, method=method)
    assert set(obs) == set(OBSERVABLES)
    for b, t in enumerate(theta.numpy()):
        D = reference_dirac(t, kappa)
        sign, logabsdet = np.linalg.slogdet(D)
        plaq = t[0] + np.roll(t[1], -1, axis=0) - np.roll(t[0], -1, axis=1) - t[1]
        charge = ((plaq + np.pi) % (2 * np.pi) - np.pi).sum() / (2 * np.pi)
        expected = {
            "gauge_action": -beta * np.cos(plaq).sum(),
            "fermion_action": -2 * logabsdet,
            "action": -beta * np.cos(plaq).sum() - 2 * logabsdet,
            "condensate": np.trace(np.linalg.inv(D)).real / L**2,
            "sign": np.sign(sign.real),
            "topological_charge": charge,
            "plaquette": np.cos(plaq).mean(),
        }
        for key, value in expected.items():
            assert obs[key].dtype == torch.float64
            assert obs[key][b].item() == pytest.approx(value, abs=1e-10), key


def test_measure_finds_negative_determinants(generator):
    # det D changes sign for some configurations at large kappa
    theta = _theta(generator, 40, 4)
    signs = measure(theta, 1.0, 0.4)["sign"]
    expected = [np.sign(np.linalg.det(reference_dirac(t, 0.4)).real) for t in theta.numpy()]
    np.testing.assert_array_equal(signs, expected)
    assert (signs < 0).any() and (signs > 0).any()


@pytest.mark.parametrize("method", dirac.METHODS)
@pytest.mark.parametrize("L", [4, 8])
def test_free_field_condensate_matches_momentum_space(L, method):
    theta = torch.zeros(1, 2, L, L, dtype=torch.float64)
    obs = measure(theta, 2.0, 0.276, method=method)
    assert obs["condensate"].item() == pytest.approx(free_condensate(L, 0.276), abs=1e-10)
    assert obs["sign"].item() == 1.0
    assert obs["fermion_action"].item() == pytest.approx(-2 * free_log_abs_det(L, 0.276), abs=1e-10)


def test_measure_in_float32_and_inference_mode(generator):
    theta = _theta(generator, 2, 4)
    reference = measure(theta, 2.0, 0.276)
    with torch.inference_mode():
        single = measure(theta.float(), 2.0, 0.276)
        action = SchwingerAction(2.0, 0.276)(theta.float())
    for key in OBSERVABLES:
        assert single[key].dtype == torch.float32
        np.testing.assert_allclose(single[key], reference[key], rtol=1e-4, atol=1e-4, err_msg=key)
    np.testing.assert_allclose(action, reference["action"], rtol=1e-4, atol=1e-4)


def test_pure_gauge_observables_match_the_general_path_at_tiny_kappa():
    """The kappa = 0 shortcut (no factorisation) agrees with the LU path as kappa -> 0."""
    gen = torch.Generator().manual_seed(7)
    theta = 2 * torch.pi * torch.rand(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    exact0 = measure(theta, beta=2.0, kappa=0.0)
    near0 = measure(theta, beta=2.0, kappa=1e-9)
    for key, value in exact0.items():
        torch.testing.assert_close(value, near0[key], atol=1e-7, rtol=0, msg=key)


@pytest.mark.parametrize("method", ["eo", "full"])
def test_measure_factorises_each_configuration_exactly_once(monkeypatch, method):
    """Sampling's measurement: log det, sign and D^-1 from one LU per configuration."""
    import torch.linalg as tla

    from gaugeflow.physics import observables

    factorised = []
    real_lu_factor = tla.lu_factor

    def counting_lu_factor(A, *args, **kwargs):
        factorised.append(A.shape[:-2].numel())
        return real_lu_factor(A, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a second factorisation route was used")

    monkeypatch.setattr(tla, "lu_factor", counting_lu_factor)
    for name in ("slogdet", "det", "inv", "solve", "lu_factor_ex", "lu"):
        monkeypatch.setattr(tla, name, forbidden)
    torch.manual_seed(0)
    theta = torch.rand(5, 2, 4, 4, dtype=torch.float64) * 2 * torch.pi
    out = observables.measure(theta, beta=2.0, kappa=0.276, method=method)
    assert sum(factorised) == 5
    assert torch.isfinite(out["condensate"]).all()


def test_training_config_takes_loop_as_the_papers_implementation():
    from gaugeflow.errors import UserError
    from gaugeflow.training import make_config

    assert make_config({"assembly": "loop"})["action_method"] == "full"
    assert make_config({})["action_method"] == "eo"
    assert make_config({"assembly": "scatter", "action_method": "full"})["action_method"] == "full"
    with pytest.raises(UserError, match="'action_method' must be 'full'"):
        make_config({"assembly": "loop", "action_method": "eo"})


@pytest.mark.parametrize("method", ["eo", "full"])
def test_index_tables_first_built_in_inference_mode_serve_autograd_later(method):
    """Sampling (inference mode) may build the cached index tables first; training in the same
    process must still differentiate through them (a fresh L, so the tables are new here)."""
    action = SchwingerAction(beta=2.0, kappa=0.276, method=method)
    theta = torch.rand(
        2, 2, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    with torch.inference_mode():
        reference = action(theta)
    theta = theta.clone().requires_grad_(True)
    value = action(theta)
    value.sum().backward()
    assert torch.allclose(value.detach(), reference, rtol=0, atol=1e-9)
    assert torch.isfinite(theta.grad).all()
