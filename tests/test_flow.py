"""The gauge-equivariant flow: exact inverse, exact log-det, equivariance, masks, config, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from gaugeflow.cli import main as cli_main
from gaugeflow.errors import UserError
from gaugeflow.flows import CONFIG_KEYS, Flow, UniformPrior, build_flow, default_config
from gaugeflow.flows.coupling import rect_loops_from_links
from gaugeflow.flows.masks import coupling_masks, link_sign
from gaugeflow.physics.u1 import gauge_transform, plaquette, random_gauge, rect_loops

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_flow(
    L: int = 4,
    n_layers: int = 8,
    dtype: str = "float64",
    sharpen: float = 1.0,
    loops: bool = True,
    seed: int = 0,
    charge_symmetric: bool = False,
    holonomy: bool = False,
) -> Flow:
    """A small flow; `sharpen` scales the last conv so the splines are far from the identity."""
    torch.manual_seed(seed)
    flow = build_flow(
        {
            "L": L,
            "n_layers": n_layers,
            "hidden_channels": 8,
            "loops": loops,
            "dtype": dtype,
            "device": "cpu",
            "charge_symmetric": charge_symmetric,
            "holonomy": holonomy,
        }
    )
    with torch.no_grad():
        for layer in flow.layers:
            layer.net[-1].weight.mul_(sharpen)
            layer.net[-1].bias.mul_(sharpen)
        gen = torch.Generator().manual_seed(seed + 1)
        for layer in flow.holonomy_layers:  # zero-initialised heads: make them act
            layer.head.weight.copy_(0.3 * torch.randn(layer.head.weight.shape, generator=gen))
            layer.head.bias.copy_(0.3 * torch.randn(layer.head.bias.shape, generator=gen))
    return flow


def sample(L: int, n: int, dtype: str = "float64", seed: int = 1) -> torch.Tensor:
    return UniformPrior(L, dtype=DTYPES[dtype]).sample(n, torch.Generator().manual_seed(seed))


# --- prior ------------------------------------------------------------------------------


def test_prior_samples_uniform_angles_with_constant_log_density():
    prior = UniformPrior(8, dtype=torch.float64)
    z = prior.sample(500, torch.Generator().manual_seed(3))
    assert z.shape == (500, 2, 8, 8) and z.dtype == torch.float64
    assert z.min() >= 0 and z.max() < 2 * math.pi
    assert abs(z.mean().item() - math.pi) < 0.05
    expected = -2 * 64 * math.log(2 * math.pi)
    torch.testing.assert_close(prior.log_prob(z), torch.full((500,), expected, dtype=torch.float64))


def test_prior_is_reproducible_from_a_generator():
    prior = UniformPrior(4)
    a = prior.sample(3, torch.Generator().manual_seed(7))
    b = prior.sample(3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="L=4"):
        prior.log_prob(torch.zeros(2, 2, 8, 8))


# --- inverse and log-det ----------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, sharpen, tol",
    [("float32", 1.0, 1e-5), ("float64", 1.0, 1e-10), ("float64", 3.0, 1e-10)],
)
def test_reverse_inverts_forward(dtype, sharpen, tol):
    flow = make_flow(L=8, n_layers=8, dtype=dtype, sharpen=sharpen)
    z = sample(8, 16, dtype)
    with torch.no_grad():
        phi, log_det = flow(z)
        z_back, log_det_reverse = flow.reverse(phi)
    assert (phi - z).abs().max() > 0.1, "the flow should not be close to the identity here"
    torch.testing.assert_close(z_back, z, rtol=0, atol=tol)
    torch.testing.assert_close(
        log_det + log_det_reverse, torch.zeros_like(log_det), rtol=0, atol=100 * tol
    )


def test_reverse_inverts_forward_when_plaquettes_sit_on_the_cut():
    """Plaquettes at 0 = 2pi must not make links jump by 2pi between the directions."""
    flow = make_flow(L=4, n_layers=8, dtype="float64", sharpen=3.0)
    eps = torch.tensor([0.0, 1e-15, -1e-15, 2 * math.pi, 2 * math.pi - 1e-15], dtype=torch.float64)
    z = torch.zeros(5, 2, 4, 4, dtype=torch.float64) + eps.view(5, 1, 1, 1)
    with torch.no_grad():
        phi, _ = flow(z)
        z_back, _ = flow.reverse(phi)
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_layers, charge_symmetric", [(1, False), (8, False), (8, True)])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_logdet_matches_autograd_jacobian(n_layers, charge_symmetric, direction):
    """log_det is log|det| of the full 2V x 2V Jacobian of the link map.

    Links are real numbers (not wrapped), so the map is a smooth map of R^(2V) and its
    Jacobian is the derivative of the unwrapped output angles w.r.t. the input angles.
    """
    L = 4
    flow = make_flow(L=L, n_layers=n_layers, sharpen=5.0, charge_symmetric=charge_symmetric)
    z = sample(L, 1)
    apply = flow if direction == "forward" else flow.reverse

    def link_map(flat: torch.Tensor) -> torch.Tensor:
        return apply(flat.view(1, 2, L, L))[0].flatten()

    jac = jacobian(link_map, z.flatten())
    assert jac.shape == (2 * L * L, 2 * L * L)
    sign, log_abs_det = torch.linalg.slogdet(jac)
    _, log_det = apply(z)
    assert sign == 1, "monotone splines preserve orientation"
    assert abs(log_det.item()) > 0.5, "test needs a flow far from volume-preserving"
    torch.testing.assert_close(log_det[0], log_abs_det, rtol=0, atol=1e-9)


# --- symmetry and structure -------------------------------------------------------------


@pytest.mark.parametrize("holonomy", [False, True])
def test_charge_symmetric_flow_is_equivariant_under_charge_conjugation(holonomy):
    """flow(-z) = -flow(z) (links are not wrapped: equal up to multiples of 2pi) with equal
    log det, so log q(-phi) = log q(phi); the same flow without the option is not."""
    L = 4
    z = sample(L, 8)
    for symmetric in (False, True):
        flow = make_flow(L=L, sharpen=3.0, charge_symmetric=symmetric, holonomy=holonomy)
        with torch.no_grad():
            phi, log_det = flow(z)
            phi_c, log_det_c = flow(-z)
            z_back, _ = flow.reverse(phi_c)
        gap = torch.remainder(phi_c + phi + math.pi, 2 * math.pi) - math.pi
        if symmetric:
            torch.testing.assert_close(gap, torch.zeros_like(gap), rtol=0, atol=1e-10)
            torch.testing.assert_close(log_det_c, log_det, rtol=0, atol=1e-10)
            torch.testing.assert_close(z_back, -z, rtol=0, atol=1e-10)
        else:
            assert (log_det_c - log_det).abs().max() > 0.1


def test_flow_is_gauge_equivariant():
    L = 8
    flow = make_flow(L=L, n_layers=8, sharpen=2.0)
    z = sample(L, 4)
    alpha = random_gauge(z, torch.Generator().manual_seed(5))
    with torch.no_grad():
        phi, log_det = flow(z)
        phi_g, log_det_g = flow(gauge_transform(z, alpha))
        z_g, log_det_rev_g = flow.reverse(gauge_transform(phi, alpha))
    torch.testing.assert_close(phi_g, gauge_transform(phi, alpha), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det_g, log_det, rtol=0, atol=1e-10)
    torch.testing.assert_close(z_g, gauge_transform(z, alpha), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det_rev_g, -log_det, rtol=0, atol=1e-10)


def test_each_link_is_updated_n_layers_over_eight_times():
    L, n_layers = 8, 16
    flow = make_flow(L=L, n_layers=n_layers)
    theta = sample(L, 2)
    counts = torch.zeros(2, 2, L, L, dtype=torch.long)
    with torch.no_grad():
        for layer in flow.layers:
            new, _ = layer(theta)
            counts += (new != theta).long()
            theta = new
    assert (counts == n_layers // 8).all(), f"update counts {counts.unique().tolist()}"


@pytest.mark.parametrize("index", range(8))
def test_active_plaquettes_depend_only_on_themselves_and_frozen_inputs(index):
    """Within one layer, d P'_active(x) / d theta_mu(y) = 0 for updated y != x.

    Moving the updated link y changes exactly the active plaquette P(y) and the passive one
    below it, so a diagonal Jacobian means: no dependence on other active plaquettes and none
    on passive ones. The conditioner's inputs do not depend on any updated link.
    """
    L = 8
    flow = make_flow(L=L, n_layers=8, sharpen=2.0)
    layer = flow.layers[index]
    masks = coupling_masks(L, layer.mu, layer.k)
    z = sample(L, 1)

    def new_active_plaquettes(theta: torch.Tensor) -> torch.Tensor:
        return plaquette(layer(theta)[0])[0][masks.active]

    def features(theta: torch.Tensor) -> torch.Tensor:
        return layer.conditioner_features(theta, plaquette(theta))

    jac = jacobian(new_active_plaquettes, z)[:, 0, layer.mu][:, masks.links]  # [n_act, n_upd]
    off_diagonal = jac - torch.diag(torch.diagonal(jac))
    assert off_diagonal.abs().max() == 0, f"cross-dependence {off_diagonal.abs().max():.3g}"
    # the diagonal is sign * h'(p): its log-moduli add up to the layer's log-det
    diagonal = torch.diagonal(jac)
    assert (diagonal * link_sign(layer.mu) > 0).all()
    torch.testing.assert_close(diagonal.abs().log().sum(), layer(z)[1][0], rtol=0, atol=1e-10)

    feat_jac = jacobian(features, z)[:, :, :, :, 0]  # [1, C, L, L, 2, L, L]
    assert feat_jac[..., layer.mu, :, :][..., masks.links].abs().max() == 0
    assert feat_jac.abs().max() > 0


@pytest.mark.parametrize("index", [0, 5])
def test_conditioner_inputs_are_bitwise_unchanged_by_the_layer(index):
    """So forward and reverse compute the same spline parameters (exact inverse)."""
    flow = make_flow(L=8, n_layers=8, dtype="float32", sharpen=3.0)
    layer = flow.layers[index]
    theta = sample(8, 4, "float32") * 7  # links far from [0, 2pi), as deep in the flow
    with torch.no_grad():
        new, _ = layer(theta)
        before = layer.conditioner_features(theta, plaquette(theta))
        after = layer.conditioner_features(new, plaquette(new))
    assert torch.equal(before, after)


def test_samples_in_a_batch_are_independent():
    L = 4
    flow = make_flow(L=L, n_layers=8, sharpen=2.0)
    z = sample(L, 4).requires_grad_()
    phi, log_det = flow(z)
    (grad,) = torch.autograd.grad(phi[1].sum() + log_det[1], z)
    assert grad[[0, 2, 3]].abs().max() == 0
    assert grad[1].abs().max() > 0

    z2 = z.detach().clone()
    z2[[0, 2, 3]] = sample(L, 3, seed=9)
    with torch.no_grad():
        phi2, log_det2 = flow(z2)
    torch.testing.assert_close(phi2[1], phi[1].detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_det2[1], log_det[1].detach(), rtol=0, atol=1e-12)


def test_rect_loops_from_links_match_u1():
    theta = sample(8, 3)
    for ours, reference in zip(
        rect_loops_from_links(theta), rect_loops(plaquette(theta)), strict=True
    ):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)


def test_flow_without_loops_uses_plaquettes_only():
    flow = make_flow(L=4, n_layers=8, loops=False, sharpen=2.0)
    assert all(layer.net[0].in_channels == 2 for layer in flow.layers)
    z = sample(4, 3)
    with torch.no_grad():
        z_back, _ = flow.reverse(flow(z)[0])
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-10)


# --- execution modes --------------------------------------------------------------------


def test_flow_runs_under_no_grad_inference_mode_and_autocast():
    flow = make_flow(L=8, n_layers=8, dtype="float32")
    z = sample(8, 8, "float32")
    phi_ref, log_det_ref = flow(z)
    with torch.no_grad():
        phi, log_det = flow(z)
    assert not phi.requires_grad
    torch.testing.assert_close(phi, phi_ref.detach())
    with torch.inference_mode():
        phi, log_det = flow(z)
        z_back, _ = flow.reverse(phi)
    torch.testing.assert_close(log_det, log_det_ref.detach())
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-5)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        phi_a, log_det_a = flow(z)
        z_a, log_det_rev_a = flow.reverse(phi_a.detach())
    assert phi_a.dtype == log_det_a.dtype == z_a.dtype == torch.float32
    # exact up to bf16 rounding: an ulp-level change in float32 features can move the bf16
    # conditioner output by one bf16 ulp (~4e-3 relative) in the next layer down
    torch.testing.assert_close(z_a, z, rtol=0, atol=1e-2)
    torch.testing.assert_close(log_det_rev_a, -log_det_a.detach(), rtol=0, atol=1e-1)
    torch.testing.assert_close(phi_a, phi_ref.detach(), rtol=0, atol=0.1)
    (log_det_rev_a.mean() + log_det_a.mean()).backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_reverse_with_grad_reaches_every_parameter():
    """REINFORCE differentiates log q through the reverse flow."""
    flow = make_flow(L=4, n_layers=8, dtype="float32", sharpen=2.0)
    with torch.no_grad():
        phi, _ = flow(sample(4, 8, "float32"))
    _, log_det_reverse = flow.reverse(phi)
    log_det_reverse.mean().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_flow_rejects_configurations_it_was_not_built_for():
    flow = make_flow(L=4, dtype="float32")
    with pytest.raises(ValueError, match="L=4"):
        flow(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="dtype"):
        flow(torch.zeros(2, 2, 4, 4, dtype=torch.float64))


# --- configuration ----------------------------------------------------------------------


def test_default_config_is_the_paper_architecture():
    config = default_config(8)
    assert config == {
        "L": 8,
        "n_layers": 48,
        "n_bins": 8,
        "hidden_channels": 64,
        "kernel_size": 3,
        "dilations": [1, 2, 3],
        "loops": True,
        "holonomy": False,
        "charge_symmetric": False,
        "dtype": "float32",
        "device": "cpu",
    }
    flow = build_flow(config)
    assert flow.device == torch.device("cpu")
    per_layer = (6 * 64 * 9 + 64) + (64 * 64 * 9 + 64) + (64 * 24 * 9 + 24)
    assert flow.n_parameters() == 48 * per_layer == 2_606_208
    assert flow.dtype == torch.float32


def test_config_is_json_and_rebuilds_the_same_flow():
    flow = make_flow(L=4, n_layers=8, sharpen=2.0)
    rebuilt = build_flow(json.loads(json.dumps(flow.config)))
    assert rebuilt.config == flow.config
    assert set(flow.state_dict()) == {name for name, _ in flow.named_parameters()}
    rebuilt.load_state_dict(flow.state_dict())
    z = sample(4, 2)
    with torch.no_grad():
        assert torch.equal(rebuilt(z)[0], flow(z)[0])


def test_config_dtype_follows_the_parameters():
    """A flow cast after building must not be rebuilt (and its weights loaded) in float32."""
    flow = make_flow(L=4, dtype="float32").double()
    assert flow.config["dtype"] == "float64"
    assert build_flow(flow.config).dtype == torch.float64
    flow.config["n_layers"] = 99  # a copy: the flow's own config cannot be edited by accident
    assert flow.config["n_layers"] == 8


def test_unknown_config_key_is_a_user_error_naming_it():
    with pytest.raises(UserError) as info:
        build_flow({"L": 8, "n_layer": 8})
    message = str(info.value)
    assert "'n_layer'" in message
    assert "valid keys: " + ", ".join(CONFIG_KEYS) in message


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"L": 6}, "multiple of 4"),
        ({}, "'L'"),
        ({"L": 8, "n_layers": 0}, "'n_layers'"),
        ({"L": 8, "kernel_size": 4}, "'kernel_size'"),
        ({"L": 8, "dilations": []}, "'dilations'"),
        ({"L": 4, "dilations": [1, 8]}, "exceeds the lattice size"),
        ({"L": 8, "loops": "yes"}, "'loops'"),
        ({"L": 8, "dtype": "float16"}, "dtype"),
        ({"L": 8, "device": "tpu"}, "device"),
    ],
)
def test_bad_config_values_are_user_errors(bad, match):
    with pytest.raises(UserError, match=match):
        build_flow(bad)


# --- command line -----------------------------------------------------------------------


def test_cli_flow_info_prints_the_parameter_count(capsys):
    assert cli_main(["flow-info", "--L", "4", "--n-layers", "8", "--hidden", "4"]) == 0
    out = capsys.readouterr().out
    torch.manual_seed(0)
    expected = build_flow({"L": 4, "n_layers": 8, "hidden_channels": 4, "device": "cpu"})
    assert f"parameters: {expected.n_parameters():,}" in out
    assert "coupling layers: 8" in out


def test_cli_flow_info_reads_a_config_and_reports_user_errors(tmp_path, capsys):
    path = tmp_path / "flow.json"
    path.write_text(json.dumps({"flow": {"L": 12, "n_layers": 8, "loops": False}}))
    assert cli_main(["flow-info", "--config", str(path), "--hidden", "4"]) == 0
    out = capsys.readouterr().out
    assert "L = 12" in out and "cos, sin of frozen plaquettes\n" in out
    assert cli_main(["flow-info", "--L", "10"]) == 2
    assert "multiple of 4" in capsys.readouterr().err


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.3])
def test_conditioner_matches_stock_torch_modules_value_and_gradients(slope):
    """The fused circular-pad convolutions against nn.Sequential's own forward (F.pad circular,
    nn.Conv2d, nn.LeakyReLU), float64: output, input gradient and weight gradients."""
    from torch import nn

    from gaugeflow.flows.nets import ConditionerCNN

    torch.manual_seed(3)
    net = ConditionerCNN(6, 5, hidden_channels=7, dilations=(1, 2, 3)).double()
    for m in net:
        if isinstance(m, nn.LeakyReLU):
            m.negative_slope = slope
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 5, 8, 8, dtype=torch.float64)

    def grads(forward):
        net.zero_grad(set_to_none=True)
        x.grad = None
        y = forward(x)
        (y * probe).sum().backward()
        return y.detach(), x.grad.clone(), [p.grad.clone() for p in net.parameters()]

    y_ours, gx_ours, gp_ours = grads(net)
    y_ref, gx_ref, gp_ref = grads(lambda t: nn.Sequential.forward(net, t))
    torch.testing.assert_close(y_ours, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx_ours, gx_ref, rtol=0, atol=1e-12)
    for a, b in zip(gp_ours, gp_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    with torch.no_grad():
        torch.testing.assert_close(net(x), y_ref, rtol=0, atol=1e-12)
