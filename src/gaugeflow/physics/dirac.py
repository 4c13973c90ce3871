"""Wilson-Dirac operator of the 2D Schwinger model (paper eq. 25) and the fermion action.

    D = 1 - kappa sum_mu [(1 - sigma_mu) U_mu(x) delta_{y,x+mu} + (1 + sigma_mu) U_mu^+(x - mu) delta_{y,x-mu}]

with sigma_0, sigma_1 the first two Pauli matrices and U_mu(x) = exp(i theta_mu(x)); periodic
in space (mu = 1), antiperiodic in time (mu = 0): a hop that wraps around in x0 picks up -1.
Row index x, column index y, fermion index ``2 * (x0 * L + x1) + spin``. float32 angles give
complex64 matrices, float64 angles complex128.

Two assemblies build the same matrix bit for bit: ``loop`` places one 2x2 block per site and
hop in a preallocated matrix, as the paper's code does (its autograd graph grows like L^2),
``scatter`` places all blocks in one vectorised call (a graph of constant size).

Even-odd: hops join sites of opposite parity (x0 + x1) % 2, so in even-odd order
D = [[1, D_eo], [D_oe, 1]] and det D = det S with the odd-odd Schur complement
S = 1 - D_oe D_eo, a matrix of half the size (8x fewer flops in the determinant).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from . import linalg
from .u1 import check_theta, shift

__all__ = [
    "ASSEMBLIES",
    "METHODS",
    "PAULI",
    "check_kappa",
    "complex_dtype",
    "neighbours",
    "parity_sites",
    "hop_blocks",
    "dirac_matrix",
    "schur_complement",
    "fermion_matrix",
    "fermion_action",
]

ASSEMBLIES = ("scatter", "loop")
METHODS = ("eo", "full")

#: sigma_x, sigma_y, sigma_z
PAULI = (
    ((0, 1), (1, 0)),
    ((0, -1j), (1j, 0)),
    ((1, 0), (0, -1)),
)

# hop k = 2 * mu + d: d = 0 steps to x + mu_hat, d = 1 to x - mu_hat
_HOPS = tuple((mu, d) for mu in (0, 1) for d in (0, 1))


def check_kappa(kappa: float) -> float:
    """Validate the hopping parameter: a finite real number >= 0."""
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)):
        raise ValueError(f"kappa must be a real number >= 0; got {kappa!r}")
    if not math.isfinite(kappa) or kappa < 0:
        raise ValueError(f"kappa must be a finite real number >= 0; got {kappa!r}")
    return float(kappa)


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value


def complex_dtype(theta: torch.Tensor) -> torch.dtype:
    """complex64 for float32 angles, complex128 for float64; ValueError otherwise."""
    if theta.dtype == torch.float32:
        return torch.complex64
    if theta.dtype == torch.float64:
        return torch.complex128
    raise ValueError(f"theta must be float32 or float64 for the Dirac operator; got {theta.dtype}")


def _check_dirac_input(theta: torch.Tensor, kappa: float) -> tuple[int, float]:
    L = check_theta(theta)
    if L < 2:
        raise ValueError(f"the Dirac operator needs L >= 2; got L = {L}")
    complex_dtype(theta)
    return L, check_kappa(kappa)


@lru_cache(maxsize=64)
def _neighbour_table(L: int) -> tuple[tuple[int, ...], ...]:
    table = []
    for mu, d in _HOPS:
        step = 1 if d == 0 else -1
        row = []
        for x0 in range(L):
            for x1 in range(L):
                y = [x0, x1]
                y[mu] = (y[mu] + step) % L
                row.append(y[0] * L + y[1])
        table.append(tuple(row))
    return tuple(table)


def neighbours(L: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Site index of x + hop k for k = (+0, -0, +1, -1): int64 tensor [4, L*L]."""
    return torch.tensor(_neighbour_table(L), dtype=torch.int64, device=device)


def parity_sites(L: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the even and the odd sites ((x0 + x1) % 2 = 0, 1), in increasing order."""
    x0, x1 = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    odd = ((x0 + x1) % 2).flatten().bool()
    sites = torch.arange(L * L)
    return sites[~odd].to(device), sites[odd].to(device)


def hop_blocks(theta: torch.Tensor, kappa: float) -> torch.Tensor:
    """The 2x2 hopping blocks, shape [B, 4, V, 2, 2], complex.

    Entry [b, k, x] is the block D[x, y] with y = neighbours(L)[k, x]:
    -kappa (1 - sigma_mu) U_mu(x) for a forward hop, -kappa (1 + sigma_mu) U_mu(x - mu)^* for
    a backward one, times -1 when the hop wraps around in time.
    """
    L, kappa = _check_dirac_input(theta, kappa)
    cdtype = complex_dtype(theta)
    angles = []
    for mu, d in _HOPS:
        angles.append(theta[:, mu] if d == 0 else -shift(theta[:, mu], mu, -1))
    angles = torch.stack(angles, dim=1)  # [B, 4, L, L]
    phases = torch.complex(torch.cos(angles), torch.sin(angles))

    # antiperiodic time: the forward hop from x0 = L-1 and the backward one from x0 = 0 wrap
    bc = torch.ones(4, L, L, dtype=theta.dtype, device=theta.device)
    bc[0, L - 1, :] = -1
    bc[1, 0, :] = -1
    phases = phases * bc

    eye = torch.eye(2, dtype=cdtype)
    spin = torch.stack(
        [
            -kappa * (eye - torch.tensor(PAULI[mu], dtype=cdtype) * (1 if d == 0 else -1))
            for mu, d in _HOPS
        ]
    ).to(theta.device)  # [4, 2, 2]
    return phases.reshape(*phases.shape[:2], L * L, 1, 1) * spin[None, :, None]


@lru_cache(maxsize=64)
def _scatter_index(L: int) -> torch.Tensor:
    """Flat index row * n + col of every entry of every hopping block, in hop_blocks order."""
    n = 2 * L * L
    nbr = neighbours(L)
    x = torch.arange(L * L)
    spin = torch.arange(2)
    rows = 2 * x[None, :, None, None] + spin[None, None, :, None]
    cols = 2 * nbr[:, :, None, None] + spin[None, None, None, :]
    return (rows * n + cols).reshape(-1)


def _scatter_blocks(
    blocks: torch.Tensor, index: torch.Tensor, n: int, dtype: torch.dtype
) -> torch.Tensor:
    """1 + sum of blocks placed at flat positions `index` of an n x n matrix, batched."""
    batch = blocks.shape[0]
    base = torch.eye(n, dtype=dtype, device=blocks.device).reshape(1, n * n).repeat(batch, 1)
    index = index.to(blocks.device).expand(batch, -1)
    # in place on a fresh tensor: one autograd node, no second n^2 copy
    return base.scatter_add_(1, index, blocks.reshape(batch, -1)).reshape(batch, n, n)


def _loop_assembly(blocks: torch.Tensor, L: int, dtype: torch.dtype) -> torch.Tensor:
    n = 2 * L * L
    D = torch.eye(n, dtype=dtype, device=blocks.device).repeat(blocks.shape[0], 1, 1)
    table = _neighbour_table(L)
    for x in range(L * L):
        for k in range(len(_HOPS)):
            y = table[k][x]
            D[:, 2 * x : 2 * x + 2, 2 * y : 2 * y + 2] += blocks[:, k, x]
    return D


def dirac_matrix(theta: torch.Tensor, kappa: float, assembly: str = "scatter") -> torch.Tensor:
    """The Wilson-Dirac matrix D, complex [B, 2V, 2V]; differentiable in theta."""
    _check_choice(assembly, ASSEMBLIES, "assembly")
    L, kappa = _check_dirac_input(theta, kappa)
    blocks = hop_blocks(theta, kappa)
    cdtype = blocks.dtype
    if assembly == "loop":
        return _loop_assembly(blocks, L, cdtype)
    return _scatter_blocks(blocks, _scatter_index(L), 2 * L * L, cdtype)


def _spin_index(sites: torch.Tensor) -> torch.Tensor:
    return (2 * sites[:, None] + torch.arange(2, device=sites.device)).reshape(-1)


@lru_cache(maxsize=64)
def _schur_index(L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each odd site o and hops k1, k2: the even site e = o + k1, and the flat index in
    S of the 2x2 block (o, o + k1 + k2), in odd-site numbering."""
    nbr = neighbours(L)
    even, odd = parity_sites(L)
    rank = torch.empty(L * L, dtype=torch.int64)
    rank[odd] = torch.arange(odd.numel())
    mid = nbr[:, odd]  # [4 (k1), V/2]: even sites
    end = rank[nbr[:, mid]]  # [4 (k2), 4 (k1), V/2]: odd-site rank of o + k1 + k2
    n = 2 * odd.numel()
    o = torch.arange(odd.numel())
    spin = torch.arange(2)
    rows = 2 * o[None, None, :, None, None] + spin[:, None]
    cols = 2 * end[..., None, None] + spin
    return odd, mid, (rows * n + cols).reshape(-1)


def _check_even(L: int) -> None:
    if L % 2:
        raise ValueError(f"the even-odd decomposition needs an even L; got L = {L}")


def schur_complement(theta: torch.Tensor, kappa: float, assembly: str = "scatter") -> torch.Tensor:
    """S = 1 - D_oe D_eo on the odd sites, complex [B, V, V]; det S = det D.

    Index ``2 * r + spin`` with r the rank of the odd site among odd sites (increasing site
    index). ``scatter`` builds S directly from the 16 two-hop paths out of each odd site (no
    dense product); ``loop`` slices the blocks of the loop-assembled D and multiplies them.
    """
    _check_choice(assembly, ASSEMBLIES, "assembly")
    L, kappa = _check_dirac_input(theta, kappa)
    _check_even(L)
    if assembly == "loop":
        D = dirac_matrix(theta, kappa, assembly="loop")
        even, odd = (_spin_index(s) for s in parity_sites(L, theta.device))
        D_oe = D[:, odd][:, :, even]
        D_eo = D[:, even][:, :, odd]
        eye = torch.eye(odd.numel(), dtype=D.dtype, device=D.device)
        return eye - D_oe @ D_eo
    blocks = hop_blocks(theta, kappa)  # [B, 4, V, 2, 2]
    odd, mid, index = _schur_index(L)
    odd, mid = odd.to(theta.device), mid.to(theta.device)
    first = blocks[:, :, odd]  # D_oe blocks: [B, 4 (k1), V/2, 2, 2]
    second = blocks[:, :, mid]  # D_eo blocks at o + k1: [B, 4 (k2), 4 (k1), V/2, 2, 2]
    paths = -torch.einsum("bkost,bjkotu->bjkosu", first, second)
    return _scatter_blocks(paths, index, L * L, blocks.dtype)


def fermion_matrix(
    theta: torch.Tensor, kappa: float, method: str = "eo", assembly: str = "scatter"
) -> torch.Tensor:
    """The matrix whose determinant is det D: D itself ("full") or its Schur complement ("eo")."""
    _check_choice(method, METHODS, "method")
    if method == "full":
        return dirac_matrix(theta, kappa, assembly)
    return schur_complement(theta, kappa, assembly)


def fermion_action(
    theta: torch.Tensor, kappa: float, method: str = "eo", assembly: str = "scatter"
) -> torch.Tensor:
    """-log det D^+ D = -2 log|det D| per configuration, real [B]; differentiable in theta."""
    _, logabsdet = linalg.slogdet(fermion_matrix(theta, kappa, method, assembly))
    return -2 * logabsdet
