"""Tests of gaugeflow.sampling: independence Metropolis bookkeeping, statistics, NIS, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gaugeflow.analysis import acceptance_rate, gamma_analysis
from gaugeflow.errors import UserError
from gaugeflow.io import load_npz
from gaugeflow.sampling import (
    FlowProposer,
    Proposals,
    chain_metadata,
    draw_proposals,
    independence_metropolis,
    load_model,
    metropolis_step_indices,
    run_chain,
    sample_model,
    save_chain,
)

NEG_INF = -math.inf


class ScriptedSource:
    """Proposals with prescribed log weights; every column identifies the proposal it came from.

    Proposal k has log q = -k / 10, log P = log q + log_weights[k], plaquette = k,
    condensate = 100 + k, sign = (-1)^k and topological_charge = -k: so a chain entry tells
    exactly which configuration the chain sat on.
    """

    def __init__(self, log_weights: list[float]) -> None:
        self.log_weights = np.asarray(log_weights, dtype=np.float64)
        self.position = 0
        self.calls: list[int] = []

    def __call__(self, n: int) -> Proposals:
        k = np.arange(self.position, self.position + n, dtype=np.float64)
        self.position += n
        self.calls.append(n)
        logq = -k / 10
        return Proposals(
            logq=logq,
            logp=logq + self.log_weights[k.astype(int)],
            observables={
                "plaquette": k.copy(),
                "condensate": 100 + k,
                "sign": (-1.0) ** k,
                "topological_charge": -k,
            },
        )


class IntervalSource:
    """x ~ U(0, 1) proposals (log q = 0) for the target P(x) = Z * 2x on [0, 1]."""

    def __init__(self, seed: int, log_z: float = 0.0, exact_target: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.log_z = log_z
        self.exact_target = exact_target

    def __call__(self, n: int) -> Proposals:
        x = self.rng.random(n)
        logq = np.zeros(n)
        if self.exact_target:  # target equals the proposal density (times Z)
            logp = logq + self.log_z
        else:
            logp = self.log_z + np.log(2 * x)
        return Proposals(logq, logp, {"x": x, "gauss": self.rng.standard_normal(n)})


# --- decisions and bookkeeping ---------------------------------------------------------------


def test_step_indices_accept_better_and_reject_impossible_proposals():
    log_w = np.array([0.0, NEG_INF, 0.5, NEG_INF, np.nan, 2.0])
    log_u = np.log(np.full(6, 0.999))
    accepted, index = metropolis_step_indices(log_w, log_u, current=NEG_INF, first=True)
    assert accepted.tolist() == [True, False, True, False, False, True]
    assert index.tolist() == [0, 0, 2, 2, 2, 5]


def test_step_indices_use_the_log_ratio_against_the_current_configuration():
    # proposal log weight 0 against current 1: accept iff log u < -1
    log_w = np.array([0.0, 0.0])
    log_u = np.array([-1.01, -0.99])
    accepted, index = metropolis_step_indices(log_w, log_u, current=1.0)
    # first accepted (u < e^-1); the chain then sits at weight 0, so the second has ratio 0
    assert accepted.tolist() == [True, True]
    accepted, index = metropolis_step_indices(log_w[::-1].copy(), log_u[::-1].copy(), 1.0)
    assert accepted.tolist() == [False, True] and index.tolist() == [-1, 1]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])
def test_chain_repeats_the_previous_configuration_exactly_after_rejections(batch_size):
    # a weight above the current one always accepts (log u < 0); -inf always rejects, and so
    # does -100 against a current weight >= 0 (log u >= log 2^-53 > -37 for a nonzero draw).
    # Batch boundaries fall on rejections, so the carried state is checked too.
    lw = [0.0, -100.0, NEG_INF, 1.0, -100.0, 5.0, -100.0, -100.0, -100.0, 7.0, 7.5]
    sits_on = [0, 0, 0, 3, 3, 5, 5, 5, 5, 9, 10]
    source = ScriptedSource(lw)
    chain = independence_metropolis(source, len(lw), np.random.default_rng(0), batch_size)
    assert chain["accepted"].tolist() == [k in {0, 3, 5, 9, 10} for k in range(len(lw))]
    k = np.array(sits_on, dtype=np.float64)
    np.testing.assert_array_equal(chain["plaquette"], k)
    np.testing.assert_array_equal(chain["condensate"], 100 + k)
    np.testing.assert_array_equal(chain["sign"], (-1.0) ** k)
    np.testing.assert_array_equal(chain["topological_charge"], -k)
    # log q and log P are those of the configuration the chain is at, not of the rejected one
    np.testing.assert_array_equal(chain["logq"], -k / 10)
    np.testing.assert_array_equal(chain["logp"], -k / 10 + np.array(lw)[sits_on])
    assert sum(source.calls) == len(lw), "each proposal must be evaluated exactly once"


def test_first_step_is_the_first_proposal_even_if_it_is_poor():
    lw = [-50.0, NEG_INF, -49.0]
    chain = independence_metropolis(ScriptedSource(lw), 3, np.random.default_rng(1), 2)
    assert chain["accepted"].tolist() == [True, False, True]
    assert chain["plaquette"].tolist() == [0.0, 0.0, 2.0]


def test_same_seed_gives_the_same_chain_and_another_seed_does_not():
    def run(source_seed: int, seed: int) -> dict[str, np.ndarray]:
        return independence_metropolis(
            IntervalSource(source_seed), 2000, np.random.default_rng(seed), batch_size=128
        )

    a, b, c = run(3, 4), run(3, 4), run(3, 5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["accepted"], c["accepted"])


def test_bad_chain_length_is_a_user_error():
    with pytest.raises(UserError):
        independence_metropolis(IntervalSource(0), 0, np.random.default_rng(0))


# --- statistics of the chain -----------------------------------------------------------------


def test_chain_samples_the_target_with_the_exact_acceptance():
    # P(x) ∝ 2x on [0, 1] with uniform proposals: <x> = 2/3 and, in equilibrium,
    # acceptance = ∫∫ 2x min(1, x'/x) dx' dx = 2/3. A wrong sign in the ratio gives 1/3.
    n = 2**15
    chain = independence_metropolis(
        IntervalSource(6, log_z=12.3), n, np.random.default_rng(7), batch_size=1000
    )
    res = gamma_analysis(chain["x"])
    assert abs(res["mean"] - 2 / 3) < 3 * res["error"], res
    acc = acceptance_rate(chain["accepted"])
    assert abs(acc - 2 / 3) < 0.015, acc
    assert res["tau_int"] > 0.6, "rejections must correlate the chain"


def test_proposal_equal_to_target_accepts_everything_and_is_uncorrelated():
    n = 2**14
    chain = independence_metropolis(
        IntervalSource(8, log_z=-3.0, exact_target=True), n, np.random.default_rng(9), 512
    )
    assert chain["accepted"].all()
    assert acceptance_rate(chain["accepted"]) == 1.0
    for key in ("x", "gauss"):
        res = gamma_analysis(chain[key])
        assert abs(res["tau_int"] - 0.5) < 3 * res["tau_int_error"] + 1e-9, (key, res)


def test_draw_proposals_concatenates_batches_in_order():
    props = draw_proposals(ScriptedSource([0.0] * 10), 10, batch_size=4)
    assert len(props) == 10
    np.testing.assert_array_equal(props.observables["plaquette"], np.arange(10.0))


# --- chain files -----------------------------------------------------------------------------


def test_saved_chain_round_trips_with_metadata(tmp_path):
    lw = [0.0, NEG_INF, 1.0, NEG_INF]
    chain = independence_metropolis(ScriptedSource(lw), 4, np.random.default_rng(0), 2)
    meta = chain_metadata(
        seed=5, model="m/model.pt", beta=2.0, kappa=0.276, L=8, config={"a": 1}, batch_size=2
    )
    path = tmp_path / "sub" / "chain.npz"
    save_chain(path, chain, meta)
    loaded = load_npz(path, keys=("accepted", "logq", "logp", "plaquette", "config"))
    np.testing.assert_array_equal(loaded["accepted"], chain["accepted"])
    np.testing.assert_array_equal(loaded["logp"], chain["logp"])
    assert int(loaded["seed"]) == 5 and float(loaded["kappa"]) == 0.276
    assert str(loaded["model"]) == "m/model.pt" and int(loaded["L"]) == 8
    assert '"a": 1' in str(loaded["config"])
    assert list(path.parent.iterdir()) == [path], "no temporary files may remain"


# --- model files -----------------------------------------------------------------------------


def _tiny_payload(L: int = 4) -> tuple[torch.nn.Module, dict]:
    from gaugeflow.flows.model import build_flow

    torch.manual_seed(0)
    flow = build_flow({"L": L, "n_layers": 2, "hidden_channels": 4, "dilations": [1]})
    payload = {
        "flow_config": dict(flow.config),
        "state_dict": flow.state_dict(),
        "action": {"beta": 2.0, "kappa": 0.0},
        "config": {"L": L, "beta": 2.0, "kappa": 0.0, "seed": 0},
    }
    return flow, payload


def test_load_model_rebuilds_the_same_flow(tmp_path):
    flow, payload = _tiny_payload()
    torch.save(payload, tmp_path / "model.pt")
    loaded, prior, action, config = load_model(tmp_path / "model.pt", "cpu")
    z = prior.sample(3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        phi_a, ld_a = flow(z)
        phi_b, ld_b = loaded(z)
    torch.testing.assert_close(phi_a, phi_b, rtol=0, atol=0)
    torch.testing.assert_close(ld_a, ld_b, rtol=0, atol=0)
    assert not loaded.training
    assert prior.L == 4 and action == {"beta": 2.0, "kappa": 0.0} and config["seed"] == 0


@pytest.mark.parametrize("missing", ["flow_config", "state_dict", "action", "config"])
def test_load_model_names_a_missing_key(tmp_path, missing):
    _, payload = _tiny_payload()
    del payload[missing]
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(UserError, match=repr(missing)):
        load_model(tmp_path / "model.pt")


def test_load_model_names_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(UserError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")


# --- with the real flow and physics ----------------------------------------------------------


class IdentityFlow(torch.nn.Module):
    """phi = z with log_det = 0: the flow's density is the uniform prior."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z.clone(), torch.zeros(z.shape[0], dtype=z.dtype)


def test_flow_proposer_matches_direct_evaluation():
    from gaugeflow.flows.prior import UniformPrior
    from gaugeflow.physics.action import SchwingerAction
    from gaugeflow.physics.observables import measure

    flow, _ = _tiny_payload(L=4)
    flow.eval()
    prior = UniformPrior(4)
    target = {"beta": 2.0, "kappa": 0.276}
    source = FlowProposer(flow, prior, target, torch.Generator().manual_seed(3))
    props = source(5)

    z = prior.sample(5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        phi, log_det = flow(z)
    theta = phi.double()
    np.testing.assert_allclose(props.logq, (prior.log_prob(z) - log_det).double().numpy())
    expected_logp = -SchwingerAction(2.0, 0.276)(theta).numpy()
    np.testing.assert_allclose(props.logp, expected_logp, rtol=1e-10, atol=1e-8)
    obs = measure(theta, 2.0, 0.276)
    for key in ("plaquette", "condensate", "sign", "topological_charge"):
        np.testing.assert_allclose(props.observables[key], obs[key].real.double().numpy())


def test_flow_equal_to_target_accepts_everything():
    # identity flow on the uniform prior proposes exactly the beta = 0, kappa = 0 target
    from gaugeflow.analysis import analyze_chain
    from gaugeflow.flows.prior import UniformPrior

    source = FlowProposer(
        IdentityFlow(),
        UniformPrior(4),
        {"beta": 0.0, "kappa": 0.0},
        torch.Generator().manual_seed(0),
    )
    chain = independence_metropolis(source, 4096, np.random.default_rng(0), batch_size=512)
    out = analyze_chain(chain)
    assert out["acceptance"] == 1.0
    assert out["bridges"]["count"] == 0
    plaq = out["plaquette"]
    assert abs(plaq["tau_int"] - 0.5) < 3 * plaq["tau_int_error"] + 1e-9, plaq
    assert abs(plaq["mean"]) < 3 * plaq["error"], plaq  # <cos P> = 0 at beta = 0


def _cli(*argv: str) -> int:
    from gaugeflow.cli import main

    return main([*argv, "--device", "cpu", "--no-progress"] if argv[0] != "analyze" else list(argv))


def test_cli_verbs_write_the_contracted_keys(tmp_path, capsys):
    import json

    _, payload = _tiny_payload(L=4)
    payload["action"] = {"beta": 2.0, "kappa": 0.276, "method": "eo", "assembly": "scatter"}
    model = tmp_path / "model.pt"
    torch.save(payload, model)
    chain_path, a_path = tmp_path / "chain.npz", tmp_path / "a.json"
    common = ("--model", str(model), "--n", "300", "--seed", "4", "--batch-size", "64")

    assert _cli("sample", *common, "--out", str(chain_path)) == 0
    chain = load_npz(chain_path)
    for key in (
        "accepted",
        "logq",
        "logp",
        "plaquette",
        "condensate",
        "sign",
        "topological_charge",
    ):
        assert chain[key].shape == (300,), key
    assert int(chain["seed"]) == 4 and float(chain["kappa"]) == 0.276 and int(chain["L"]) == 4

    assert _cli("analyze", "--chain", str(chain_path), "--out", str(a_path)) == 0
    analysis = json.loads(a_path.read_text())
    for key in ("plaquette", "condensate", "sign", "topological_charge"):
        assert set(analysis[key]) >= {"mean", "error", "tau_int", "tau_int_error"}, key
    assert set(analysis["bridges"]) >= {"count", "longest", "long_lengths"}
    assert analysis["seed"] == 4 and analysis["config"]["seed"] == 0
    # every estimate says whether it can be trusted (issue 17): 300 steps of an untrained
    # flow are far too few, and the summary line says so with the reason
    for key in ("plaquette", "condensate", "sign", "topological_charge"):
        assert isinstance(analysis[key]["reliable"], bool) and "reason" in analysis[key], key
    assert analysis["n_distinct"] == int(chain["accepted"].sum())
    assert analysis["longest_rejection_run"] == analysis["bridges"]["longest"]
    assert analysis["reliable"] is False and analysis["reason"]
    assert f"unreliable: {analysis['reason']}" in capsys.readouterr().out
    # the chain file keeps every proposal's log densities, so it also gives an NIS estimate
    assert chain["proposal_logq"].shape == (300,)
    assert set(analysis["nis"]) >= {"free_energy", "free_energy_error", "ess"}

    assert _cli("acceptance", *common, "--out", str(tmp_path / "acc.json")) == 0
    acc = json.loads((tmp_path / "acc.json").read_text())
    # same seed: same proposals and draws, so the action-only path decides identically
    assert acc["acceptance"] == analysis["acceptance"]
    # and its ESS is that of the same fresh proposals (the cost figure's y axis)
    assert acc["ess"] == pytest.approx(analysis["nis"]["ess"], rel=1e-6)

    assert _cli("nis", *common, "--out", str(tmp_path / "nis.json")) == 0
    nis = json.loads((tmp_path / "nis.json").read_text())
    assert set(nis) >= {"free_energy", "free_energy_error", "ess", "plaquette", "condensate"}
    assert set(nis["condensate"]) == {"mean", "error"}
    assert 0 < nis["ess"] <= 1
    for key in ("pareto_k", "pareto_k_threshold", "ess_count", "psis_log_z", "reason"):
        assert key in nis, key
    assert nis["ess_count"] == pytest.approx(300 * nis["ess"])
    assert nis["pareto_k_threshold"] == pytest.approx(1 - 1 / math.log10(300))
    line = capsys.readouterr().out
    assert f"k̂ {nis['pareto_k']:.2f}" in line
    assert ("unreliable: k̂ = " in line) == (not nis["reliable"]), line

    assert _cli("sample", *common, "--kappa", "0", "--out", str(tmp_path / "c0.npz")) == 0
    assert float(load_npz(tmp_path / "c0.npz")["kappa"]) == 0.0


def test_nis_from_a_chain_file_equals_drawing_the_proposals_again(tmp_path, capsys):
    """`nis --chain` reads the proposals `sample` kept: the same numbers as `nis --model` with
    the chain's seed, batch size and symmetrisation (the same draws), without sampling."""
    import json

    _, payload = _tiny_payload(L=4)
    payload["action"] = {"beta": 2.0, "kappa": 0.276, "method": "eo", "assembly": "scatter"}
    model = tmp_path / "model.pt"
    torch.save(payload, model)
    common = ("--model", str(model), "--n", "200", "--seed", "7", "--batch-size", "48")
    chain = tmp_path / "chain.npz"
    assert _cli("sample", *common, "--symmetrize", "P", "--out", str(chain)) == 0
    assert _cli("nis", *common, "--symmetrize", "P", "--out", str(tmp_path / "m.json")) == 0
    from gaugeflow.cli import main

    assert main(["nis", "--chain", str(chain), "--out", str(tmp_path / "c.json")]) == 0
    drawn = json.loads((tmp_path / "m.json").read_text())
    kept = json.loads((tmp_path / "c.json").read_text())
    for key in ("plaquette", "condensate", "sign", "topological_charge"):
        assert kept[key] == drawn[key], key
    for key in ("free_energy", "free_energy_error", "ess", "pareto_k", "n", "seed", "L"):
        assert kept[key] == drawn[key], key
    assert kept["symmetry"] == "P" and kept["chain"] == str(chain)
    assert kept["config"] == drawn["config"]
    # a chain's own proposals, not new ones: drawing options are refused, by name
    capsys.readouterr()
    argv = ["nis", "--chain", str(chain), "--seed", "3", "--out", str(tmp_path / "x.json")]
    assert main(argv) == 2
    assert "--seed" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    # a chain file without the proposals' observables (an older one): named, nothing written
    data = dict(np.load(chain))
    del data["proposal_plaquette"]
    old = tmp_path / "old.npz"
    np.savez(old, **data)
    assert main(["nis", "--chain", str(old), "--out", str(tmp_path / "y.json")]) == 2
    err = capsys.readouterr().err
    assert "proposal_plaquette" in err and str(old) in err and not (tmp_path / "y.json").exists()
    assert main(["nis", "--model", str(model), "--out", str(tmp_path / "z.json")]) == 2
    assert "--n" in capsys.readouterr().err


def test_cli_reports_a_bad_chain_file_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, accepted=np.ones(10, dtype=bool))
    assert _cli("analyze", "--chain", str(bad), "--out", str(tmp_path / "a.json")) == 2
    assert "logq" in capsys.readouterr().err


# --- physics validation ----------------------------------------------------------------------


def test_uniform_proposals_reproduce_exact_pure_u1_at_small_beta():
    """Identity flow (q = uniform prior) at beta = 0.3, L = 4: the chain's <cos P> and the NIS
    free energy, from the same proposals, agree with the exact values. This checks log q,
    log P = -S and the Lebesgue-measure convention of F without any training."""
    from gaugeflow.analysis import analyze_chain, nis_estimates
    from gaugeflow.flows.prior import UniformPrior
    from gaugeflow.physics.exact import exact_pure_gauge

    exact = exact_pure_gauge(0.3, 4)
    source = FlowProposer(
        IdentityFlow(),
        UniformPrior(4),
        {"beta": 0.3, "kappa": 0.0},
        torch.Generator().manual_seed(3),
    )
    chain, offered = run_chain(source, 8192, np.random.default_rng(3), batch_size=1024)
    plaq = analyze_chain(chain)["plaquette"]
    assert abs(plaq["mean"] - exact["plaquette"]) < 3 * plaq["error"], (plaq, exact)
    nis = nis_estimates(offered.logq, offered.logp, offered.observables)
    assert nis["ess"] > 0.3
    pull = (nis["free_energy"] - exact["free_energy"]) / nis["free_energy_error"]
    assert abs(pull) < 3, (nis["free_energy"], nis["free_energy_error"], exact)
    assert abs(nis["plaquette"]["mean"] - exact["plaquette"]) < 3 * nis["plaquette"]["error"]


def test_uniform_proposals_at_beta_2_on_8x8_are_flagged_unreliable():
    """Identity flow at beta = 2, L = 8: the prior's ESS is ~1e-22, so 4096 proposals say
    nothing about Z; the PSIS verdict must say so instead of quoting an error bar."""
    from gaugeflow.analysis import nis_estimates
    from gaugeflow.flows.prior import UniformPrior

    source = FlowProposer(
        IdentityFlow(),
        UniformPrior(8),
        {"beta": 2.0, "kappa": 0.0},
        torch.Generator().manual_seed(5),
    )
    props = draw_proposals(source, 4096, batch_size=1024)
    nis = nis_estimates(props.logq, props.logp, {})
    assert nis["ess_count"] < 20, nis
    assert nis["pareto_k"] > nis["pareto_k_threshold"] and nis["reliable"] is False, nis
    assert nis["reason"].startswith("k̂ = ")


#: A small flow for pure U(1) at L = 4 that trains in well under a CPU minute (r.t., seed
#: fixed); its 4096 fresh proposals give ESS ~ 0.15 and k-hat ~ 0.45.
PURE_U1_L4 = {
    "L": 4,
    "beta": 2.0,
    "kappa": 0.0,
    "estimator": "rt",
    "steps": 200,
    "batch_size": 64,
    "lr": 3e-3,
    "seed": 1,
    "device": "cpu",
    "flow": {"n_layers": 8, "hidden_channels": 16},
    "checkpoint_every": 1000,
}


@pytest.mark.slow
def test_trained_flow_flagged_reliable_reproduces_exact_log_z(tmp_path):
    """Pure U(1), kappa = 0, beta = 2, L = 4 (exactly solvable): the trained flow's NIS on 4096
    fresh proposals is flagged reliable by PSIS, and then its log Z (plain and PSIS) agrees
    with the exact one within 3 errors. (An estimate flagged unreliable may miss.)"""
    from gaugeflow.physics.exact import exact_pure_gauge
    from gaugeflow.sampling import model_nis
    from gaugeflow.training import train

    torch.set_num_threads(1)  # same seed -> same numbers (conftest restores the count)
    summary = train(PURE_U1_L4, tmp_path, progress=False)
    assert summary["status"] == "completed"
    exact = exact_pure_gauge(2.0, 4)["log_z"]
    nis = model_nis(tmp_path / "model.pt", n=4096, seed=2, batch_size=1024, device="cpu")
    report = {k: nis[k] for k in ("ess", "pareto_k", "log_z", "free_energy_error", "psis_log_z")}
    report["exact"] = exact
    # the precondition: this flow is good enough to be trusted (else the test proves nothing)
    assert nis["reliable"] is True, report
    assert abs(nis["log_z"] - exact) < 3 * nis["free_energy_error"], report
    assert abs(nis["psis_log_z"] - exact) < 3 * nis["psis_log_z_error"], report


#: A small flow for pure U(1) at L = 8 that trains in about a CPU minute (r.t., seed fixed).
PURE_U1_L8 = {
    "L": 8,
    "beta": 2.0,
    "kappa": 0.0,
    "estimator": "rt",
    "steps": 250,
    "batch_size": 64,
    "lr": 3e-3,
    "seed": 1,
    "device": "cpu",
    "flow": {"n_layers": 8, "hidden_channels": 16},
    "checkpoint_every": 1000,
}


@pytest.mark.slow
def test_trained_flow_reproduces_exact_pure_u1(tmp_path):
    """Pure U(1), kappa = 0, beta = 2, L = 8, small trained flow: the chain's <cos P> and the
    NIS free energy of the same proposals agree with the exact values within 3 errors."""
    from gaugeflow.analysis import analyze_chain
    from gaugeflow.physics.exact import exact_pure_gauge
    from gaugeflow.training import train

    # one thread: same seed -> same numbers on CPU, whatever OMP_NUM_THREADS the runner sets
    # (the conftest fixture restores the thread count afterwards)
    torch.set_num_threads(1)
    summary = train(PURE_U1_L8, tmp_path, progress=False)
    assert summary["status"] == "completed"
    exact = exact_pure_gauge(2.0, 8)

    chain, _ = sample_model(tmp_path / "model.pt", n=2**14, seed=2, batch_size=2048, device="cpu")
    out = analyze_chain(chain)
    plaq, nis = out["plaquette"], out["nis"]
    report = f"acceptance {out['acceptance']:.3f}, plaquette {plaq}, nis {nis}, exact {exact}"
    # a sanity check that training happened: uniform proposals at beta = 2, L = 8 are almost
    # never accepted (prior ESS ~ (I0(2)^2/I0(4))^64 ~ 1e-22); this small flow reaches 1.9-4%
    assert out["acceptance"] > 0.01, report
    assert abs(plaq["mean"] - exact["plaquette"]) < 3 * plaq["error"], report
    # NIS as issue 17 defines it: an estimate flagged reliable must agree within 3 errors; one
    # flagged unreliable may miss, but must say why (the L = 4 test above covers a reliable
    # flow). With 150 steps at lr 1e-2 this flow reached k-hat 0.67, was flagged reliable and
    # missed by 5 errors: see the issue-17 note; this setting trains a better chain.
    if nis["reliable"]:
        assert abs(nis["free_energy"] - exact["free_energy"]) < 3 * nis["free_energy_error"], report
    else:
        assert nis["reason"], report
