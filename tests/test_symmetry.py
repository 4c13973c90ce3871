"""Symmetrised proposals (gaugeflow.symmetry): the group, the target's invariance, the mixture
density's invariance and normalisation (against exact pure U(1)), and the CLI option."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gaugeflow.errors import UserError
from gaugeflow.symmetry import SymmetryGroup, parse_symmetry, symmetric_logq


@pytest.mark.parametrize(
    "spec, L, canonical, size",
    [
        ("none", 8, "none", 1),
        (None, 8, "none", 1),
        ("C", 8, "C", 2),
        ("T", 8, "T", 64),
        ("T2", 8, "T2", 16),
        ("T4", 8, "T4", 4),
        ("C+T", 4, "T+C", 32),
        (" T2 + C ", 8, "T2+C", 32),
        ("C+P", 8, "P+C", 8),
        ("P+T4+C", 8, "T4+P+C", 32),
        ("T+P+C", 4, "T+P+C", 128),
    ],
)
def test_parse_names_the_group_and_its_size(spec, L, canonical, size):
    group = parse_symmetry(spec, L)
    assert group.spec == canonical and group.size == size
    elements = group.elements
    assert len(elements) == size == len(set(elements))
    assert elements[0] == (0, 0, 0, 0, 1)  # the identity first


@pytest.mark.parametrize(
    "spec, words",
    [
        ("X", ["'X'", "T, T2, T4, P, C"]),
        ("T+t", ["'t'"]),
        ("T+T", ["twice"]),
        ("T+T2", ["one translation group"]),
    ],
)
def test_bad_specs_are_refused_by_name(spec, words):
    with pytest.raises(UserError) as err:
        parse_symmetry(spec, 8)
    for word in words:
        assert word in str(err.value)


def test_translation_stride_must_divide_L():
    with pytest.raises(UserError, match="divisible"):
        parse_symmetry("T4", 6)


@pytest.mark.parametrize("spec", ["T+C", "T2+C", "T4", "C", "P", "T2+P+C"])
def test_elements_form_a_group(spec):
    """Closed under composition: g(h(theta)) is some element's image of theta."""
    group = parse_symmetry(spec, 8)
    theta = torch.rand(1, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    images = {g: group.transform(theta, g) for g in group.elements}
    for g in group.elements:
        for h in group.elements[:: max(1, group.size // 7)]:
            both = group.transform(images[h], g)
            assert any(torch.equal(both, image) for image in images.values()), (g, h)


def test_schwinger_action_is_invariant_under_the_group():
    """The claim symmetrisation rests on: translations (antiperiodic time boundary for the
    fermions), reflections of either axis and charge conjugation leave
    S = S_gauge - log det D^dagger D unchanged."""
    from gaugeflow.physics.action import SchwingerAction

    action = SchwingerAction(2.0, 0.276)
    theta = 2 * math.pi * torch.rand(3, 2, 4, 4, dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(1))  # fmt: skip
    s = action(theta)
    group = parse_symmetry("T+P+C", 4)
    for g in group.elements:
        torch.testing.assert_close(action(group.transform(theta, g)), s, rtol=1e-12, atol=1e-9)
    # and the check can fail: maps that are not symmetries change S (a naive mirror that
    # does not reverse the links; the pure-gauge part alone would not notice sign errors)
    assert (action(theta.flip(-1)) - s).abs().max() > 1e-3
    swapped = torch.stack((theta[:, 1], theta[:, 0]), dim=1).transpose(-1, -2)
    assert (action(swapped) - s).abs().max() > 1e-3  # x <-> t: the boundary conditions differ


def _random_flow(L: int, dtype=torch.float64):
    """A small freshly initialised flow: q far from uniform (log det spread ~1.2 at L = 4) and
    far from symmetric (log q of an image differs by up to ~6)."""
    from gaugeflow.flows.model import build_flow

    torch.manual_seed(3)
    flow = build_flow({"L": L, "n_layers": 8, "hidden_channels": 8, "dilations": [1, 2],
                       "holonomy": True, "dtype": "float64", "device": "cpu"})  # fmt: skip
    return flow.eval().to(dtype)


def _logq(flow, phi):
    from gaugeflow.flows.prior import UniformPrior
    from gaugeflow.sampling import flow_logq

    return flow_logq(flow, UniformPrior(flow.L, dtype=phi.dtype), phi)


def test_mixture_density_is_invariant_and_reduces_to_the_flow():
    flow = _random_flow(4)
    phi = 2 * math.pi * torch.rand(6, 2, 4, 4, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(2))  # fmt: skip
    with torch.no_grad():
        plain = _logq(flow, phi)
        group = parse_symmetry("T2+P+C", 4)
        mixed = symmetric_logq(lambda x: _logq(flow, x), phi, plain, group, max_batch=20)
        # the flow is far from symmetric (else this test would prove nothing) ...
        moved = _logq(flow, group.transform(phi, (1, 2, 0, 1, -1)))
        assert (moved - plain).abs().max() > 0.1
        # ... and the mixture is exactly invariant under every element
        for g in group.elements:
            image = group.transform(phi, g)
            again = symmetric_logq(lambda x: _logq(flow, x), image, _logq(flow, image), group)
            torch.testing.assert_close(again, mixed, rtol=0, atol=1e-9)
        # the trivial group is the flow itself
        one = symmetric_logq(lambda x: _logq(flow, x), phi, plain, parse_symmetry("none", 4))
        torch.testing.assert_close(one, plain, rtol=0, atol=1e-12)


def test_random_elements_are_drawn_per_configuration():
    group = parse_symmetry("T+P+C", 4)
    theta = torch.rand(64, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = group.apply_random(theta, torch.Generator().manual_seed(1))
    matched = []
    for row in range(64):
        hits = [g for g in group.elements if torch.equal(group.transform(theta[row:row + 1], g),
                                                         out[row:row + 1])]  # fmt: skip
        assert len(hits) == 1
        matched.append(hits[0])
    assert len(set(matched)) > 10  # not one element for the whole batch
    same = group.apply_random(theta, torch.Generator().manual_seed(1))
    assert torch.equal(same, out)  # seeded


def test_symmetrised_nis_reproduces_exact_pure_u1():
    """beta = 0.2, kappa = 0, L = 4 (exactly solvable), a random flow (q far from uniform):
    NIS with proposals symmetrised over T2+P+C (|G| = 32) gives log Z and <cos P> within 3
    errors.
    A mixture density off by any constant (e.g. without the 1/|G|, log 32 = 3.5) would miss by
    far more than the error (about 0.01 here)."""
    from gaugeflow.analysis import nis_estimates
    from gaugeflow.flows.prior import UniformPrior
    from gaugeflow.physics.exact import exact_pure_gauge
    from gaugeflow.sampling import FlowProposer, draw_proposals

    torch.set_num_threads(1)
    flow = _random_flow(4)
    exact = exact_pure_gauge(0.2, 4)
    group = parse_symmetry("T2+P+C", 4)
    source = FlowProposer(flow, UniformPrior(4, dtype=torch.float64), {"beta": 0.2, "kappa": 0.0},
                          torch.Generator().manual_seed(4), symmetry=group)  # fmt: skip
    props = draw_proposals(source, 4096, batch_size=512)
    nis = nis_estimates(props.logq, props.logp, props.observables)
    report = (nis["free_energy"], nis["free_energy_error"], nis["ess"], exact)
    assert nis["reliable"], report
    assert nis["free_energy_error"] < 0.1, report
    assert abs(nis["free_energy"] - exact["free_energy"]) < 3 * nis["free_energy_error"], report
    plaq = nis["plaquette"]
    assert abs(plaq["mean"] - exact["plaquette"]) < 3 * plaq["error"], (plaq, exact)


def test_symmetrised_weights_beat_the_flow_on_the_same_samples():
    """By convexity KL(q_G || P) <= KL(q || P) for a G-invariant P; on 2048 samples of a
    random flow at beta = 0.2 the mixture's log-weight variance is a third of the flow's."""
    from gaugeflow.flows.prior import UniformPrior
    from gaugeflow.physics.action import SchwingerAction

    flow = _random_flow(4)
    prior = UniformPrior(4, dtype=torch.float64)
    with torch.no_grad():
        z = prior.sample(2048, generator=torch.Generator().manual_seed(5))
        phi, log_det = flow(z)
        logq = prior.log_prob(z) - log_det
        logp = -SchwingerAction(0.2, 0.0)(phi)
        mixed = symmetric_logq(lambda x: _logq(flow, x), phi, logq, parse_symmetry("T+C", 4))
    assert float((logp - mixed).var()) < 0.5 * float((logp - logq).var())


def _cli(*argv: str) -> int:
    from gaugeflow.cli import main

    return main([*argv, "--device", "cpu", "--no-progress"])


def test_cli_symmetrize_is_recorded_and_a_bad_group_writes_nothing(tmp_path, capsys):
    from gaugeflow.io import load_npz

    flow = _random_flow(4, dtype=torch.float32)
    payload = {
        "flow_config": dict(flow.config),
        "state_dict": flow.state_dict(),
        "action": {"beta": 2.0, "kappa": 0.276},
        "config": {"L": 4, "beta": 2.0, "kappa": 0.276, "seed": 0},
    }
    model = tmp_path / "model.pt"
    torch.save(payload, model)
    common = ("--model", str(model), "--n", "64", "--seed", "1", "--batch-size", "32")

    assert _cli("sample", *common, "--symmetrize", "C+P", "--out", str(tmp_path / "c.npz")) == 0
    chain = load_npz(tmp_path / "c.npz")
    assert str(chain["symmetry"]) == "P+C" and int(chain["symmetry_size"]) == 8
    assert "symmetrised over P+C, |G| = 8" in capsys.readouterr().out

    assert _cli("nis", *common, "--symmetrize", "T", "--out", str(tmp_path / "n.json")) == 0
    nis = json.loads((tmp_path / "n.json").read_text())
    assert nis["symmetry"] == "T" and nis["symmetry_size"] == 16
    assert 0 < nis["ess"] <= 1

    plain = tmp_path / "p.json"
    assert _cli("acceptance", *common, "--out", str(plain)) == 0
    assert json.loads(plain.read_text())["symmetry"] == "none"

    bad = tmp_path / "bad.json"
    assert _cli("acceptance", *common, "--symmetrize", "T+Q", "--out", str(bad)) == 2
    assert "'Q'" in capsys.readouterr().err and not bad.exists()
    assert not np.any([p.name.startswith("bad") for p in tmp_path.iterdir()])


def test_group_transform_does_not_alias_its_input():
    theta = torch.zeros(1, 2, 4, 4)
    out = SymmetryGroup.transform(theta, (0, 0, 0, 0, 1))
    out += 1
    assert theta.abs().sum() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_symmetrised_proposals_on_cuda_match_the_cpu():
    """The same flow and seed on CUDA and on the CPU: equal configurations, log q_G and log P
    (float64 throughout; the generator stays on the CPU, so both draw the same numbers)."""
    from gaugeflow.flows.prior import UniformPrior
    from gaugeflow.sampling import FlowProposer

    group = parse_symmetry("T2+P+C", 4)
    action = {"beta": 2.0, "kappa": 0.276}
    out = {}
    for device in ("cpu", "cuda"):
        flow = _random_flow(4).to(device)
        prior = UniformPrior(4, dtype=torch.float64, device=device)
        proposer = FlowProposer(flow, prior, action, torch.Generator().manual_seed(5),
                                symmetry=group)  # fmt: skip
        out[device] = proposer(48)
    cpu, gpu = out["cpu"], out["cuda"]
    np.testing.assert_allclose(gpu.logq, cpu.logq, rtol=0, atol=1e-8)
    np.testing.assert_allclose(gpu.logp, cpu.logp, rtol=0, atol=1e-8)
    for key in cpu.observables:
        np.testing.assert_allclose(gpu.observables[key], cpu.observables[key], rtol=0, atol=1e-8)
    assert np.isfinite(cpu.logq).all() and np.ptp(cpu.logq) > 0.1  # not a degenerate flow


def test_a_charge_symmetric_flow_needs_no_c_in_the_group():
    """q(-phi) = q(phi) for a charge_symmetric flow, so q_{P+C} = q_P (and q_C = q)."""
    from gaugeflow.flows.model import build_flow

    torch.manual_seed(4)
    flow = build_flow({"L": 4, "n_layers": 8, "hidden_channels": 8, "dilations": [1, 2],
                       "holonomy": True, "dtype": "float64", "device": "cpu",
                       "charge_symmetric": True}).eval()  # fmt: skip
    with torch.no_grad():
        for layer in flow.layers:  # far from the identity
            layer.net[-1].weight.mul_(3.0)
        phi = 2 * math.pi * torch.rand(6, 2, 4, 4, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(9))  # fmt: skip
        plain = _logq(flow, phi)
        with_c = symmetric_logq(lambda x: _logq(flow, x), phi, plain, parse_symmetry("P+C", 4))
        without = symmetric_logq(lambda x: _logq(flow, x), phi, plain, parse_symmetry("P", 4))
        torch.testing.assert_close(with_c, without, rtol=0, atol=1e-9)
        torch.testing.assert_close(_logq(flow, -phi), plain, rtol=0, atol=1e-9)
        assert (without - plain).abs().max() > 0.05  # P itself still acts
