"""Conditioner replay (gaugeflow.flows.replay): REINFORCE's reverse pass reuses the sampling
pass's conditioners. The reference is the plain reverse pass, which evaluates every
conditioner afresh (``reinforce(..., replay=False)``); in float64 the two gradients must agree
to 1e-10, the same bound as issue 18's other implementation switches."""

from __future__ import annotations

import pytest
import torch

from gaugeflow.estimators import reinforce
from gaugeflow.flows import UniformPrior, build_flow
from gaugeflow.flows.replay import ConditionerTape
from gaugeflow.physics.action import SchwingerAction


def _flow(L: int, seed: int = 0, **arch) -> torch.nn.Module:
    torch.manual_seed(seed)
    flow = build_flow(
        {"L": L, "n_layers": 8, "hidden_channels": 8, "dtype": "float64", "device": "cpu", **arch}
    )
    with torch.no_grad():  # splines and holonomy maps far from the identity
        for layer in flow.layers:
            layer.net[-1].weight.mul_(3.0)
            layer.net[-1].bias.mul_(3.0)
        for layer in flow.holonomy_layers:
            layer.head.weight.normal_(0.0, 0.3)
            layer.head.bias.normal_(0.0, 0.3)
    return flow


def _step(flow, L: int, replay: bool, n: int = 6):
    prior = UniformPrior(L, dtype=torch.float64)
    z = prior.sample(n, torch.Generator().manual_seed(5))
    action = SchwingerAction(beta=2.0, kappa=0.26, method="eo", assembly="scatter")
    flow.zero_grad(set_to_none=True)
    out = reinforce(flow, prior, action.log_prob, z, replay=replay)
    out.loss.backward()
    return out, [p.grad.clone() for p in flow.parameters()]


ARCHS = {
    "plain": {},
    "holonomy": {"holonomy": True},
    "charge_symmetric": {"holonomy": True, "charge_symmetric": True},
}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("L", [4, 8])
def test_replayed_reinforce_gradient_equals_the_plain_reverse_pass(L, arch):
    flow = _flow(L, **ARCHS[arch])
    out, grads = _step(flow, L, replay=True)
    ref, grads_ref = _step(flow, L, replay=False)
    torch.testing.assert_close(out.logq, ref.logq, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-10)
    scale = max(g.abs().max().item() for g in grads_ref)
    assert scale > 1e-2  # the gradient is not trivially small
    assert all(g.abs().max() > 0 for g in grads_ref[:2])  # the first layer's weights move
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10 * scale)


def test_each_conditioner_runs_once_per_step_with_replay_and_twice_without():
    L = 8
    flow = _flow(L, holonomy=True)
    calls: list[bool] = []
    nets = [layer.net for layer in flow.layers] + [h.net for h in flow.holonomy_layers]
    hooks = [n.register_forward_pre_hook(lambda m, a: calls.append(True)) for n in nets]
    try:
        _step(flow, L, replay=True)
        with_replay = len(calls)
        calls.clear()
        _step(flow, L, replay=False)
        without = len(calls)
    finally:
        for h in hooks:
            h.remove()
    assert with_replay == len(nets) and without == 2 * len(nets)


def test_the_tape_records_one_entry_per_layer_and_empties_on_replay():
    L = 4
    flow = _flow(L)
    z = UniformPrior(L, dtype=torch.float64).sample(3, torch.Generator().manual_seed(0))
    tape = ConditionerTape()
    with torch.no_grad(), tape.recording():
        phi, log_det = flow(z)
    assert tape.pending == len(flow.layers)
    assert not phi.requires_grad and not log_det.requires_grad  # the pass stays no-grad
    with tape.replaying():
        z_back, _ = flow.reverse(phi)
        assert tape.pending == 0
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-10)
    # a replay without a recording, or a shorter recording, is an error naming the problem
    with pytest.raises(RuntimeError, match="nothing recorded"), tape.replaying():
        flow.reverse(phi)


def test_a_reverse_pass_of_another_flow_or_batch_is_refused():
    L = 4
    flow, other = _flow(L, seed=0), _flow(L, seed=1)
    prior = UniformPrior(L, dtype=torch.float64)
    z = prior.sample(3, torch.Generator().manual_seed(0))
    tape = ConditionerTape()
    with torch.no_grad(), tape.recording():
        phi, _ = flow(z)
    with pytest.raises(RuntimeError, match="out of order"), tape.replaying():
        other.reverse(phi)
    with torch.no_grad(), tape.recording():
        flow(z)
    with pytest.raises(RuntimeError, match="do not match"), tape.replaying():
        flow.reverse(prior.sample(2, torch.Generator().manual_seed(1)))
    assert tape.pending == 0  # dropped when the replaying block ends


def test_tapes_do_not_nest_and_a_replayed_graph_is_differentiated_once():
    L = 4
    flow = _flow(L)
    z = UniformPrior(L, dtype=torch.float64).sample(2, torch.Generator().manual_seed(0))
    tape = ConditionerTape()
    with pytest.raises(RuntimeError, match="do not nest"), tape.recording():
        with ConditionerTape().recording():
            pass
    with torch.no_grad(), tape.recording():
        phi, _ = flow(z)
    with tape.replaying():
        _, log_det = flow.reverse(phi)
    log_det.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="differentiated twice"):
        log_det.sum().backward()


def test_replay_under_bfloat16_autocast_matches_the_plain_reverse_pass():
    """amp on the CPU: the recorded conditioners ran under autocast, as the reverse pass's
    would; the gradients agree to bfloat16 rounding."""
    L = 4
    torch.manual_seed(0)
    flow = build_flow({"L": L, "n_layers": 8, "hidden_channels": 8})
    prior = UniformPrior(L)
    z = prior.sample(8, torch.Generator().manual_seed(2))
    action = SchwingerAction(beta=2.0, kappa=0.26)
    grads = []
    for replay in (True, False):
        flow.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = reinforce(flow, prior, action.log_prob, z, replay=replay)
        out.loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in flow.parameters()]))
    assert torch.isfinite(grads[0]).all()
    rel = (grads[0] - grads[1]).norm() / grads[1].norm()
    assert rel < 0.05, rel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["holonomy", "charge_symmetric"])
def test_replayed_gradient_on_cuda_equals_the_cpu_plain_reverse_pass(arch):
    """Every fast path of the step on CUDA (replay, gathered convolutions, the splines'
    hand-written backward) against the plain reverse pass on the CPU, float64."""
    L = 8
    flow = _flow(L, **ARCHS[arch])
    ref, grads_ref = _step(flow, L, replay=False)
    flow.to("cuda")
    prior = UniformPrior(L, dtype=torch.float64, device="cuda")
    z = UniformPrior(L, dtype=torch.float64).sample(6, torch.Generator().manual_seed(5))
    action = SchwingerAction(beta=2.0, kappa=0.26, method="eo", assembly="scatter")
    flow.zero_grad(set_to_none=True)
    out = reinforce(flow, prior, action.log_prob, z.to("cuda"), replay=True)
    out.loss.backward()
    scale = max(g.abs().max().item() for g in grads_ref)
    torch.testing.assert_close(out.logq.cpu(), ref.logq, rtol=0, atol=1e-9)
    for p, g_ref in zip(flow.parameters(), grads_ref, strict=True):
        torch.testing.assert_close(p.grad.cpu(), g_ref, rtol=0, atol=1e-9 * scale)


def test_graph_walks_follow_the_replayed_conditioners():
    """Table 3 counts the nodes a loss's backward runs: with replay that includes the
    recorded conditioner graphs (each layer adds its replay node and its recorded features'
    leaf to the plain reverse pass's graph), not only what hangs off the loss."""
    from gaugeflow.measure.graph import count_graph_nodes, node_type_counts

    L = 4
    flow = _flow(L)
    prior = UniformPrior(L, dtype=torch.float64)
    z = prior.sample(2, torch.Generator().manual_seed(0))
    action = SchwingerAction(beta=2.0, kappa=0.26)
    replayed = reinforce(flow, prior, action.log_prob, z, replay=True).loss
    plain = reinforce(flow, prior, action.log_prob, z, replay=False).loss
    n_layers = len(flow.layers)
    assert count_graph_nodes(replayed) == count_graph_nodes(plain) + 2 * n_layers
    types, types_plain = node_type_counts(replayed), node_type_counts(plain)
    assert types.pop("_ReplayBackward") == n_layers
    assert types["AccumulateGrad"] == types_plain["AccumulateGrad"] + n_layers
    assert {k: v for k, v in types.items() if k != "AccumulateGrad"} == {
        k: v for k, v in types_plain.items() if k != "AccumulateGrad"
    }
