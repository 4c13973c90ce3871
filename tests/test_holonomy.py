"""The holonomy coupling layer (flow config key `holonomy`): log-det, inverse, equivariance,
identity at init, unchanged state_dict without it, warm-start refusal, CLI flag."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from gaugeflow.cli import build_parser
from gaugeflow.commands.train import config_from_args
from gaugeflow.errors import UserError
from gaugeflow.flows import Flow, UniformPrior, build_flow
from gaugeflow.flows.holonomy import HolonomyCoupling, polyakov_loops
from gaugeflow.flows.splines import TWO_PI, spline_forward
from gaugeflow.measure import fit_dag_results, run_measurement
from gaugeflow.modelfile import ModelFile
from gaugeflow.physics.u1 import gauge_transform, plaquette, random_gauge, wrap
from gaugeflow.training import make_config, train, warm_start

SMALL = {"n_layers": 8, "hidden_channels": 8, "dtype": "float64", "device": "cpu"}


def sample(L: int, n: int, seed: int = 1) -> torch.Tensor:
    return UniformPrior(L, dtype=torch.float64).sample(n, torch.Generator().manual_seed(seed))


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 1.0) -> None:
    """Non-zero head weights (a fresh head is zero: the identity) and rescaled conv weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "head" in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def make_layer(
    L: int, mu: int, seed: int = 0, scale: float = 1.0, charge_symmetric: bool = False
) -> HolonomyCoupling:
    torch.manual_seed(seed)
    layer = HolonomyCoupling(L, mu, n_bins=8, hidden_channels=8, charge_symmetric=charge_symmetric)
    layer = layer.double()
    randomise(layer, seed, scale)
    return layer


def make_flow(L: int = 4, holonomy: bool = True, seed: int = 0, scale: float = 1.0) -> Flow:
    torch.manual_seed(seed)
    flow = build_flow({"L": L, **SMALL, "holonomy": holonomy})
    randomise(flow.holonomy_layers, seed, scale)
    return flow


# --- the layer ---------------------------------------------------------------------------


@pytest.mark.parametrize("charge_symmetric", [False, True])
@pytest.mark.parametrize("mu", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_logdet_matches_autograd_jacobian(mu, direction, charge_symmetric):
    """log g'(h) is log|det| of the full 2V x 2V Jacobian, conditioner dependence included."""
    L = 4
    # the symmetrised parameters average two outputs: a larger head keeps the layer far from
    # volume-preserving
    scale = 3.0 if charge_symmetric else 1.5
    layer = make_layer(L, mu, seed=mu, scale=scale, charge_symmetric=charge_symmetric)
    apply = layer if direction == "forward" else layer.reverse
    z = sample(L, 4, seed=2)
    largest = 0.0
    for config in z:

        def link_map(flat: torch.Tensor) -> torch.Tensor:
            return apply(flat.view(1, 2, L, L))[0].flatten()

        jac = jacobian(link_map, config.flatten())
        sign, log_abs_det = torch.linalg.slogdet(jac)
        _, log_det = apply(config.unsqueeze(0))
        assert sign == 1
        torch.testing.assert_close(log_det[0], log_abs_det, rtol=0, atol=1e-10)
        largest = max(largest, abs(log_det.item()))
    assert largest > 0.3, "test needs a layer far from volume-preserving"


def test_flow_logdet_matches_autograd_jacobian():
    L = 4
    flow = make_flow(L, scale=1.5)
    z = sample(L, 1, seed=4)
    jac = jacobian(lambda flat: flow(flat.view(1, 2, L, L))[0].flatten(), z.flatten())
    _, log_abs_det = torch.linalg.slogdet(jac)
    torch.testing.assert_close(flow(z)[1][0], log_abs_det, rtol=0, atol=1e-9)


@pytest.mark.parametrize("L", [4, 8])
@pytest.mark.parametrize("mu", [0, 1])
def test_reverse_inverts_forward(L, mu):
    layer = make_layer(L, mu, seed=L + mu, scale=2.0)
    z = sample(L, 16, seed=3)
    with torch.no_grad():
        phi, log_det = layer(z)
        z_back, log_det_reverse = layer.reverse(phi)
    assert (phi - z).abs().max() > 0.05, "the layer should not be close to the identity here"
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-10)
    # log g' reaches ~9 here: the 1e-12 rounding of h is amplified in the log slope
    zero = torch.zeros_like(log_det)
    torch.testing.assert_close(log_det + log_det_reverse, zero, atol=1e-8, rtol=0)


def test_reverse_inverts_forward_when_the_holonomy_sits_on_the_cut():
    L, mu = 4, 0
    layer = make_layer(L, mu, scale=2.0)
    eps = torch.tensor([0.0, 1e-15, -1e-15, TWO_PI, TWO_PI - 1e-15], dtype=torch.float64)
    z = sample(L, 5, seed=6)
    z[:, mu] += (eps - polyakov_loops(z, mu)[:, 0]).view(5, 1, 1) / L  # line-0 loop = eps
    with torch.no_grad():
        z_back, _ = layer.reverse(layer(z)[0])
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mu", [0, 1])
def test_forward_maps_the_line_zero_holonomy_by_the_spline_and_keeps_plaquettes(mu):
    L, nu = 4, 1 - mu
    layer = make_layer(L, mu, seed=7, scale=2.0)
    z = sample(L, 8, seed=8)
    with torch.no_grad():
        phi, log_det = layer(z)
        loops = polyakov_loops(z, mu)
        h = torch.remainder(loops[:, 0], TWO_PI)
        g, log_slope = spline_forward(h, layer._spline_params(z, loops))
    # the line-0 holonomy becomes g(h) (mod 2pi), every mu-line moves by the same g - h
    new_loops = polyakov_loops(phi, mu)
    torch.testing.assert_close(wrap(new_loops[:, 0] - g), torch.zeros_like(g), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        new_loops - loops, (g - h)[:, None].expand(-1, L), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(log_det, log_slope, rtol=0, atol=0)
    assert (g - h).abs().max() > 0.1
    torch.testing.assert_close(plaquette(phi), plaquette(z), rtol=0, atol=1e-12)
    assert torch.equal(phi[:, nu], z[:, nu])


def test_layer_is_gauge_equivariant_and_its_conditioner_gauge_invariant():
    L = 8
    layer = make_layer(L, 1, seed=9, scale=2.0)
    z = sample(L, 4, seed=10)
    alpha = random_gauge(z, torch.Generator().manual_seed(11))
    zg = gauge_transform(z, alpha)
    with torch.no_grad():
        feats = layer.conditioner_features(z, polyakov_loops(z, 1))
        feats_g = layer.conditioner_features(zg, polyakov_loops(zg, 1))
        phi, log_det = layer(z)
        phi_g, log_det_g = layer(zg)
    torch.testing.assert_close(feats_g, feats, rtol=0, atol=1e-12)
    torch.testing.assert_close(phi_g, gauge_transform(phi, alpha), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det_g, log_det, rtol=0, atol=1e-10)


# --- in the flow --------------------------------------------------------------------------


def test_flow_with_holonomy_is_gauge_equivariant():
    L = 8
    flow = make_flow(L, seed=1, scale=2.0)
    prior = UniformPrior(L, dtype=torch.float64)
    z = sample(L, 4, seed=12)
    alpha = random_gauge(z, torch.Generator().manual_seed(13))
    with torch.no_grad():
        phi, log_det = flow(z)
        phi_g, log_det_g = flow(gauge_transform(z, alpha))
        z_g, log_det_rev_g = flow.reverse(gauge_transform(phi, alpha))
        log_q = prior.log_prob(z) - log_det
        log_q_g = prior.log_prob(z_g) + log_det_rev_g  # log q of the transformed phi
    torch.testing.assert_close(phi_g, gauge_transform(phi, alpha), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det_g, log_det, rtol=0, atol=1e-10)
    torch.testing.assert_close(z_g, gauge_transform(z, alpha), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_q_g, log_q, rtol=0, atol=1e-10)


def test_flow_with_holonomy_inverts_and_reverse_order_is_right():
    flow = make_flow(8, seed=2, scale=2.0)
    z = sample(8, 8, seed=14)
    with torch.no_grad():
        phi, log_det = flow(z)
        z_back, log_det_reverse = flow.reverse(phi)
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        log_det + log_det_reverse, torch.zeros_like(log_det), atol=1e-9, rtol=0
    )


def test_fresh_holonomy_layers_are_the_identity():
    L = 4
    torch.manual_seed(5)
    plain = build_flow({"L": L, **SMALL})
    torch.manual_seed(5)
    with_holonomy = build_flow({"L": L, **SMALL, "holonomy": True})
    # the holonomy layers draw their weights after the couplings: same seed, same couplings
    theirs = with_holonomy.state_dict()
    for key, value in plain.state_dict().items():
        assert torch.equal(theirs[key], value), key
    assert set(theirs) - set(plain.state_dict()) == {
        k for k in theirs if k.startswith("holonomy_layers.")
    }
    z = sample(L, 8, seed=15)
    with torch.no_grad():
        phi_a, ld_a = plain(z)
        phi_b, ld_b = with_holonomy(z)
    torch.testing.assert_close(phi_b, phi_a, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_b, ld_a, rtol=0, atol=1e-12)


def test_without_holonomy_the_state_dict_is_unchanged():
    L = 4
    default = build_flow({"L": L, **SMALL})
    off = build_flow({"L": L, **SMALL, "holonomy": False})
    on = build_flow({"L": L, **SMALL, "holonomy": True})
    assert default.config["holonomy"] is False and on.config["holonomy"] is True
    assert list(off.state_dict()) == list(default.state_dict())
    assert all(k.startswith("layers.") for k in default.state_dict())
    assert set(on.state_dict()) - set(off.state_dict()) == {
        k for k in on.state_dict() if k.startswith("holonomy_layers.")
    }
    old_config = {k: v for k, v in default.config.items() if k != "holonomy"}  # older model.pt
    build_flow(old_config).load_state_dict(default.state_dict())
    assert "holonomy layers" in on.describe() and "holonomy" not in default.describe()


def test_bad_holonomy_value_is_a_user_error():
    with pytest.raises(UserError, match="'holonomy'"):
        build_flow({"L": 4, "holonomy": "yes"})


def test_holonomy_layers_train_under_autocast_and_gradients_reach_the_head():
    flow = build_flow({"L": 4, **SMALL, "dtype": "float32", "holonomy": True})
    z = UniformPrior(4).sample(8, torch.Generator().manual_seed(16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        phi, log_det = flow(z)
    assert phi.dtype == log_det.dtype == torch.float32 and torch.isfinite(log_det).all()
    (phi.sin().sum() + log_det.sum()).backward()
    for layer in flow.holonomy_layers:
        assert layer.head.weight.grad.abs().max() > 0


# --- warm start, CLI, training -----------------------------------------------------------

TINY = {
    "L": 4,
    "beta": 1.0,
    "kappa": 0.0,
    "batch_size": 4,
    "flow": {"n_layers": 8, "hidden_channels": 4, "dilations": [1]},
    "device": "cpu",
    "dtype": "float64",
    "seed": 3,
}


def _save_model(path, holonomy: bool, drop_key: bool = False):
    config = make_config({**TINY, "flow": {**TINY["flow"], "holonomy": holonomy}})
    flow = build_flow({**TINY["flow"], "L": 4, "dtype": "float64", "holonomy": holonomy})
    model = ModelFile.from_flow(flow, {"beta": 1.0, "kappa": 0.0}, config, step=0)
    if drop_key:
        del model.flow_config["holonomy"]
    model.save(path)
    return path


@pytest.mark.parametrize("parent_holonomy", [True, False])
def test_warm_start_refuses_a_parent_that_differs_in_holonomy(tmp_path, parent_holonomy):
    parent = _save_model(tmp_path / "parent.pt", parent_holonomy)
    child = build_flow(
        {**TINY["flow"], "L": 8, "dtype": "float64", "holonomy": not parent_holonomy}
    )
    with pytest.raises(UserError, match="'holonomy'") as info:
        warm_start(child, parent)
    assert "hidden_channels" not in str(info.value)


def test_warm_start_from_a_model_without_the_key(tmp_path):
    parent = _save_model(tmp_path / "old.pt", False, drop_key=True)
    child = build_flow({**TINY["flow"], "L": 8, "dtype": "float64"})
    warm_start(child, parent)
    with pytest.raises(UserError, match="'holonomy'"):
        warm_start(build_flow({**TINY["flow"], "L": 8, "holonomy": True}), parent)


def test_cli_holonomy_flag_sets_the_flow_key(tmp_path):
    parser = build_parser()
    base = ["train", "--out", str(tmp_path), "--hidden", "4"]
    assert config_from_args(parser.parse_args(base + ["--holonomy"]))["flow"] == {
        "hidden_channels": 4,
        "holonomy": True,
    }
    assert (
        config_from_args(parser.parse_args(base + ["--no-holonomy"]))["flow"]["holonomy"] is False
    )
    assert "holonomy" not in config_from_args(parser.parse_args(base))["flow"]


def test_training_with_holonomy_writes_a_model_that_rebuilds(tmp_path):
    cfg = {**TINY, "kappa": 0.1, "steps": 2, "flow": {**TINY["flow"], "holonomy": True}}
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed"
    model = ModelFile.load(tmp_path / "model.pt")
    assert model.flow_config["holonomy"] is True
    flow = model.build_flow("cpu")
    assert len(flow.holonomy_layers) == 2
    head = flow.holonomy_layers[0].head.weight
    assert head.abs().max() > 0, "two Adam steps move the (zero-initialised) head"
    z = sample(4, 2)
    with torch.no_grad():
        z_back, _ = flow.reverse(flow(z)[0])
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-10)
    assert math.isfinite(summary["n_parameters"])


def test_dag_fit_groups_records_without_the_key_with_holonomy_false():
    settings = {"batch_size": 2, "estimator": "rt", "assembly": "loop", "device": "cpu"}
    flow = {"n_layers": 8, "hidden_channels": 4}
    records = [run_measurement("dag", {**settings, "L": L, "flow": flow}) for L in (4, 8)]
    assert records[0]["flow_config"]["holonomy"] is False
    del records[0]["flow_config"]["holonomy"]  # as written before the key existed
    (group,) = fit_dag_results(records)
    assert group["L"] == [4, 8] and group["architecture"]["holonomy"] is False
    on = run_measurement("dag", {**settings, "L": 4, "flow": {**flow, "holonomy": True}})
    assert len(fit_dag_results([*records, on])) == 2
