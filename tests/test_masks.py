"""Coupling masks: eq. (A.1), the layer schedule, and active / passive / frozen plaquettes."""

from __future__ import annotations

import pytest
import torch

from gaugeflow.errors import UserError
from gaugeflow.flows.masks import (
    check_lattice_size,
    coupling_masks,
    layer_schedule,
    link_mask,
    link_sign,
)
from gaugeflow.physics.u1 import plaquette, rect_loops

L = 8


def dependence_on_updated_links(fn, L: int, mu: int, links: torch.Tensor) -> torch.Tensor:
    """|d fn(theta)[site] / d theta_mu(x)| for every updated x: shape [n_updated, L, L].

    fn is linear in theta, so one unit vector per updated link gives the exact Jacobian.
    """
    updated = links.flatten().nonzero().squeeze(1)
    basis = torch.zeros(len(updated), 2, L * L, dtype=torch.float64)
    basis[torch.arange(len(updated)), mu, updated] = 1.0
    return fn(basis.view(-1, 2, L, L)).abs()


@pytest.mark.parametrize("bad", [0, 2, 6, 10, -4, 8.0, "8", True])
def test_lattice_size_must_be_a_multiple_of_four(bad):
    with pytest.raises(UserError, match="multiple of 4"):
        check_lattice_size(bad)


def test_layer_schedule_runs_k_with_mu0_then_mu1():
    expected = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert layer_schedule(8) == expected
    assert layer_schedule(20) == expected * 2 + expected[:4]


@pytest.mark.parametrize("mu", [0, 1])
@pytest.mark.parametrize("k", range(4))
def test_link_mask_follows_eq_A1(mu, k):
    expected = torch.zeros(L, L, dtype=torch.bool)
    for n in range(L // 4):
        for m in range(L // 2):
            for along, across in ((4 * n + k, 2 * m), ((4 * n + 2 + k) % L, 2 * m + 1)):
                site = [0, 0]
                site[mu], site[1 - mu] = along, across
                expected[site[0], site[1]] = True
    assert torch.equal(link_mask(L, mu, k), expected)
    assert int(expected.sum()) == L * L // 4


@pytest.mark.parametrize("n_layers", [8, 48])
def test_schedule_updates_each_link_n_layers_over_eight_times(n_layers):
    counts = torch.zeros(2, L, L, dtype=torch.long)
    for mu, k in layer_schedule(n_layers):
        counts[mu] += link_mask(L, mu, k).long()
    assert (counts == n_layers // 8).all(), counts


@pytest.mark.parametrize("mu", [0, 1])
def test_link_sign_is_the_sign_in_the_plaquette(mu):
    theta = torch.zeros(1, 2, L, L, dtype=torch.float64, requires_grad=True)
    site = (3, 5)
    (grad,) = torch.autograd.grad(plaquette(theta)[0, site[0], site[1]], theta)
    assert grad[0, mu, site[0], site[1]] == link_sign(mu)
    below = [site[0], site[1]]
    below[1 - mu] += 1  # P(y) holds theta_mu(y + nu_hat) with the opposite sign
    assert grad[0, mu, below[0], below[1]] == -link_sign(mu)


@pytest.mark.parametrize("mu, k", layer_schedule(8))
def test_plaquette_masks_partition_and_match_link_dependence(mu, k):
    masks = coupling_masks(L, mu, k)
    kinds = torch.stack([masks.active, masks.passive, masks.frozen]).long()
    assert (kinds.sum(0) == 1).all(), "active, passive and frozen must partition the lattice"
    assert int(masks.active.sum()) == int(masks.passive.sum()) == L * L // 4

    dep = dependence_on_updated_links(plaquette, L, mu, masks.links) > 0  # [n_upd, L, L]
    n_links_in_plaquette = dep.sum(0)
    # every active and every passive plaquette holds exactly one updated link; frozen ones none
    assert (n_links_in_plaquette[masks.active | masks.passive] == 1).all()
    assert (n_links_in_plaquette[masks.frozen] == 0).all()
    # the active plaquette of link x is P(x)
    rows, cols = masks.links.nonzero().unbind(1)
    assert dep[torch.arange(dep.shape[0]), rows, cols].all()


@pytest.mark.parametrize("mu, k", layer_schedule(8))
def test_frozen_loops_are_exactly_the_loops_the_layer_leaves_alone(mu, k):
    masks = coupling_masks(L, mu, k)

    def loops(theta: torch.Tensor) -> torch.Tensor:
        return torch.stack(rect_loops(plaquette(theta)), dim=1)  # [n, 2, L, L]

    touched = dependence_on_updated_links(loops, L, mu, masks.links).sum(0) > 0
    # frozen means untouched, and every untouched loop is used (the masks are maximal)
    assert torch.equal(masks.frozen_loops_2x1, ~touched[0])
    assert torch.equal(masks.frozen_loops_1x2, ~touched[1])
    # the layer's own direction has no frozen loop along it; across it, three in four are
    along = masks.frozen_loops_2x1 if mu == 0 else masks.frozen_loops_1x2
    across = masks.frozen_loops_1x2 if mu == 0 else masks.frozen_loops_2x1
    assert not along.any()
    assert int(across.sum()) == 3 * L * L // 4
