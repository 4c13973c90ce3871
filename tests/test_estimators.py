"""Gradient estimators: unbiasedness relations (paper eqs. 20-21) checked statistically."""

from __future__ import annotations

import pytest
import torch

from gaugeflow.errors import UserError
from gaugeflow.estimators import get_estimator
from gaugeflow.flows.model import build_flow, default_config
from gaugeflow.flows.prior import UniformPrior
from gaugeflow.physics.action import SchwingerAction

L = 4


def _small_flow(seed: int = 0):
    torch.manual_seed(seed)
    cfg = default_config(L)
    cfg.update({"n_layers": 8, "hidden_channels": 8, "dtype": "float64"})
    flow = build_flow(cfg).double()
    prior = UniformPrior(L, dtype=torch.float64)
    return flow, prior


def _grad(flow, est, prior, log_prob, z) -> torch.Tensor:
    flow.zero_grad(set_to_none=True)
    out = get_estimator(est)(flow, prior, log_prob, z)
    out.loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in flow.parameters()])


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(UserError, match="rt, reinforce, path"):
        get_estimator("reinforcement")


def test_mean_gradients_satisfy_eq20_and_path_is_unbiased():
    """E[g_RE] = (N-1)/N E[g_rt] and E[g_path] = E[g_rt], on paired batches."""
    flow, prior = _small_flow()
    action = SchwingerAction(beta=1.0, kappa=0.0)
    gen = torch.Generator().manual_seed(1)
    n, m = 8, 150
    d_re, d_path, g_rts = [], [], []
    for _ in range(m):
        z = prior.sample(n, generator=gen)
        g_rt = _grad(flow, "rt", prior, action.log_prob, z)
        g_re = _grad(flow, "reinforce", prior, action.log_prob, z)
        g_path = _grad(flow, "path", prior, action.log_prob, z)
        g_rts.append(g_rt)
        d_re.append(g_re - (n - 1) / n * g_rt)
        d_path.append(g_path - g_rt)
    g_rts = torch.stack(g_rts)
    direction = g_rts.mean(0)
    direction = direction / direction.norm()
    # the mean r.t. gradient is itself clearly non-zero along its own direction
    proj_rt = g_rts @ direction
    assert proj_rt.mean() / (proj_rt.std() / m**0.5) > 5
    for name, diffs in (("reinforce", d_re), ("path", d_path)):
        diffs = torch.stack(diffs)
        proj = diffs @ direction
        z_score = proj.mean() / (proj.std() / m**0.5)
        assert abs(z_score) < 4, f"{name}: projected mean difference {z_score:.2f} sigma from 0"
        # component-wise: the fraction of parameters more than 4 sigma off stays tiny
        z_all = diffs.mean(0) / (diffs.std(0) / m**0.5 + 1e-30)
        frac = (z_all.abs() > 4).double().mean().item()
        assert frac < 0.01, f"{name}: {frac:.3%} of parameters more than 4 sigma off"


def test_reinforce_gradient_vanishes_when_target_is_the_flow():
    """Paper eq. 21: with P = q the signal is constant and every batch gradient is zero."""
    flow, prior = _small_flow(seed=3)
    frozen, _ = _small_flow(seed=3)

    def log_prob(phi):  # differentiable in phi (r.t. and path need that), frozen parameters
        z, ld_rev = frozen.reverse(phi)
        return prior.log_prob(z) + ld_rev

    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        z = prior.sample(16, generator=gen)
        g_re = _grad(flow, "reinforce", prior, log_prob, z)
        g_rt = _grad(flow, "rt", prior, log_prob, z)
        g_path = _grad(flow, "path", prior, log_prob, z)
        assert g_rt.abs().max() > 1e-6  # the r.t. estimator is noisy batch by batch
        assert g_re.abs().max() < 1e-9, f"max |g_RE| = {g_re.abs().max():.3e}"
        # the path gradient "sticks the landing" too: zero at the optimum for every batch
        assert g_path.abs().max() < 1e-9, f"max |g_path| = {g_path.abs().max():.3e}"
