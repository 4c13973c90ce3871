"""Which links a coupling layer updates, and what that makes of plaquettes and loops.

Layer (mu, k) updates the links U_mu(x) at x = (4n + k) mu_hat + 2m nu_hat and
x = (4n + 2 + k) mu_hat + (2m + 1) nu_hat, nu = 1 - mu (paper eq. A.1 with the authors'
4n + 2 + k; the printed 4n + 2 + 2k would leave half of the odd rows untouched). The
schedule runs k = 0..3 with mu = 0, then k = 0..3 with mu = 1, and repeats: eight layers
update every link once.

In ``plaquette`` (gaugeflow.physics.u1) the link theta_mu(x) enters P(x) with the sign
``link_sign(mu)`` and P(x - nu_hat) with the opposite sign. For an updated link, P(x) is its
*active* plaquette (the layer transforms it), P(x - nu_hat) its *passive* one (it changes
as a consequence and is not used). Every other plaquette, and every 2x1 / 1x2 loop whose
boundary holds no updated link, is *frozen*: the layer leaves it unchanged, so it may
condition the transform.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ..errors import UserError

__all__ = [
    "check_lattice_size",
    "layer_schedule",
    "link_sign",
    "link_mask",
    "CouplingMasks",
    "coupling_masks",
]

Offset = tuple[int, int]


def check_lattice_size(L: int) -> int:
    """Return L if it is a positive multiple of 4 (the mask period); else raise UserError."""
    if isinstance(L, bool) or not isinstance(L, int) or L < 4 or L % 4:
        raise UserError(
            f"lattice size L must be a positive integer multiple of 4 (the coupling masks repeat "
            f"every 4 sites); got L={L!r}"
        )
    return L


def layer_schedule(n_layers: int) -> list[tuple[int, int]]:
    """(mu, k) of each layer: k = 0..3 with mu = 0, then k = 0..3 with mu = 1, repeated."""
    return [((i // 4) % 2, i % 4) for i in range(n_layers)]


def link_sign(mu: int) -> int:
    """Sign with which theta_mu(x) enters its active plaquette P(x)."""
    return 1 if mu == 0 else -1


def _coordinates(L: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")


def link_mask(L: int, mu: int, k: int) -> torch.Tensor:
    """Boolean [L, L]: True where layer (mu, k) updates theta_mu(x)."""
    check_lattice_size(L)
    if mu not in (0, 1) or k not in range(4):
        raise ValueError(f"need mu in (0, 1) and k in 0..3; got mu={mu}, k={k}")
    coords = _coordinates(L)
    along, across = coords[mu], coords[1 - mu]
    even_rows = (across % 2 == 0) & (along % 4 == k)
    odd_rows = (across % 2 == 1) & (along % 4 == (k + 2) % 4)
    return even_rows | odd_rows


def _unit(axis: int) -> Offset:
    return (1, 0) if axis == 0 else (0, 1)


def _add(a: Offset, b: Offset) -> Offset:
    return (a[0] + b[0], a[1] + b[1])


def _at_offset(mask: torch.Tensor, offset: Offset) -> torch.Tensor:
    """mask(x + offset) on the torus."""
    return torch.roll(mask, shifts=(-offset[0], -offset[1]), dims=(0, 1))


def _untouched(links: torch.Tensor, mu: int, plaquette_offsets: list[Offset]) -> torch.Tensor:
    """True where the sum of plaquettes P(x + o), o in `plaquette_offsets`, holds no updated link.

    Each plaquette contributes theta_mu at offsets o (+1) and o + nu_hat (-1); links whose
    contributions cancel lie inside the loop and do not count.
    """
    coefficient: Counter[Offset] = Counter()
    for o in plaquette_offsets:
        coefficient[o] += 1
        coefficient[_add(o, _unit(1 - mu))] -= 1
    result = torch.ones_like(links)
    for offset, c in coefficient.items():
        if c:
            result &= ~_at_offset(links, offset)
    return result


@dataclass(frozen=True)
class CouplingMasks:
    """Boolean [L, L] masks of one coupling layer (mu, k)."""

    mu: int
    k: int
    links: torch.Tensor
    active: torch.Tensor
    passive: torch.Tensor
    frozen: torch.Tensor
    frozen_loops_2x1: torch.Tensor
    frozen_loops_1x2: torch.Tensor


def coupling_masks(L: int, mu: int, k: int) -> CouplingMasks:
    """All masks of layer (mu, k); loops are based at x as in gaugeflow.physics.u1.rect_loops."""
    links = link_mask(L, mu, k)
    origin = (0, 0)
    return CouplingMasks(
        mu=mu,
        k=k,
        links=links,
        active=links.clone(),
        passive=_at_offset(links, _unit(1 - mu)),
        frozen=_untouched(links, mu, [origin]),
        frozen_loops_2x1=_untouched(links, mu, [origin, _unit(0)]),
        frozen_loops_1x2=_untouched(links, mu, [origin, _unit(1)]),
    )
