"""Per-configuration observables of the Schwinger model from one LU factorisation each."""

from __future__ import annotations

import torch

from . import linalg
from .action import check_beta
from .dirac import check_kappa, fermion_matrix, resolve_method
from .u1 import check_theta, gauge_action, mean_plaquette, topological_charge

__all__ = ["OBSERVABLES", "measure"]

#: keys of the dict `measure` returns
OBSERVABLES = (
    "gauge_action",
    "fermion_action",
    "action",
    "condensate",
    "sign",
    "topological_charge",
    "plaquette",
)


def measure(
    theta: torch.Tensor,
    beta: float,
    kappa: float,
    method: str | None = None,
    assembly: str = "scatter",
) -> dict[str, torch.Tensor]:
    """Observables per configuration, each a real tensor [B] of theta's dtype; no gradient.

    - ``gauge_action`` -beta sum cos P, ``fermion_action`` -2 log|det D|, ``action`` their sum;
    - ``condensate`` (1/V) Re Tr D^-1, ``sign`` of det D (real for this operator);
    - ``topological_charge`` Q, ``plaquette`` (1/V) sum cos P.

    One LU factorisation per configuration gives log|det D|, its sign and D^-1. With
    method "eo" it is of the Schur complement S = 1 - D_oe D_eo: det D = det S, and from
    the block inverse of D = [[1, D_eo], [D_oe, 1]], Tr D^-1 = 2 Tr S^-1.
    """
    L = check_theta(theta)
    beta, kappa = check_beta(beta), check_kappa(kappa)
    method = resolve_method(method, assembly)  # None: eo for scatter, full for loop
    volume = L * L
    with torch.no_grad():
        theta = theta.detach()
        if kappa == 0:  # pure gauge: D = 1, no factorisation needed
            gauge = gauge_action(theta, beta)
            ones = torch.ones_like(gauge)
            return {
                "gauge_action": gauge,
                "fermion_action": torch.zeros_like(gauge),
                "action": gauge,
                "condensate": 2.0 * ones,  # (1/V) Tr 1 over two spin components
                "sign": ones,
                "topological_charge": topological_charge(theta),
                "plaquette": mean_plaquette(theta),
            }
        M = fermion_matrix(theta, kappa, method=method, assembly=assembly)
        LU, pivots = linalg.lu_factor(M)
        phase, logabsdet = linalg.slogdet_from_lu(LU, pivots)
        eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M)
        trace = linalg.lu_solve(LU, pivots, eye).diagonal(dim1=-2, dim2=-1).sum(-1)
        factor = 2.0 if method == "eo" else 1.0
        gauge = gauge_action(theta, beta)
        fermion = -2 * logabsdet
        return {
            "gauge_action": gauge,
            "fermion_action": fermion,
            "action": gauge + fermion,
            "condensate": factor * trace.real / volume,
            "sign": torch.sign(phase.real).to(theta.dtype),
            "topological_charge": topological_charge(theta),
            "plaquette": mean_plaquette(theta),
        }
