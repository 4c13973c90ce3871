"""Wilson-Dirac operator of the 2D Schwinger model (paper eq. 25) and the fermion action.

    D = 1 - kappa sum_mu [(1 - sigma_mu) U_mu(x) delta_{y,x+mu} + (1 + sigma_mu) U_mu^+(x - mu) delta_{y,x-mu}]

with sigma_0, sigma_1 the first two Pauli matrices and U_mu(x) = exp(i theta_mu(x)); periodic
in space (mu = 1), antiperiodic in time (mu = 0): a hop that wraps around in x0 picks up -1.
Row index x, column index y, fermion index ``2 * (x0 * L + x1) + spin``. float32 angles give
complex64 matrices, float64 angles complex128.

Two assemblies build the same matrix bit for bit. ``scatter`` (ours, the default) computes
all blocks at once and places them in one vectorised call (an autograd graph of constant
size). ``loop`` is the paper's implementation (arXiv:2308.13294, Sec. 5 and 6.1): site by
site and hop by hop it computes the block from that site's link angle and *assigns* it into a
dense matrix, so its graph grows like L^2 (a fixed number of nodes per site, four of them
CopySlices, whose backward each copies the whole gradient of D); its determinant is that of
the full D. The even-odd method is ours and does not apply to ``loop``: the method defaults
to "full" for ``loop`` and "eo" for ``scatter``, and asking for loop with "eo" is an error.

Even-odd: hops join sites of opposite parity (x0 + x1) % 2, so in even-odd order
D = [[1, D_eo], [D_oe, 1]] and det D = det S with the odd-odd Schur complement
S = 1 - D_oe D_eo, a matrix of half the size (8x fewer flops in the determinant).
"""

from __future__ import annotations

import math
from functools import lru_cache, wraps

import torch

from .. import choices
from . import linalg
from .u1 import check_theta, shift

__all__ = [
    "ASSEMBLIES",
    "METHODS",
    "DEFAULT_METHOD",
    "resolve_method",
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

ASSEMBLIES = choices.ASSEMBLIES
METHODS = choices.ACTION_METHODS
#: the determinant each assembly takes when no method is named: the paper's (loop) is of D
DEFAULT_METHOD = {"scatter": "eo", "loop": "full"}

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


def resolve_method(method: str | None, assembly: str) -> str:
    """The action method for `assembly`: `method`, or the assembly's default when None.

    The loop assembly stands for the paper's implementation as a whole (per-site block
    assignment and the determinant of the full D), so "eo" with "loop" is a ValueError.
    """
    _check_choice(assembly, ASSEMBLIES, "assembly")
    if method is None:
        return DEFAULT_METHOD[assembly]
    _check_choice(method, METHODS, "method")
    if assembly == "loop" and method != "full":
        raise ValueError(
            f"assembly 'loop' is the paper's implementation and takes the determinant of the "
            f"full D: use method 'full' (or none) with it; method {method!r} needs assembly "
            "'scatter'"
        )
    return method


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


def _index_cache(build):
    """Cache an index-table builder per L. The tables are built outside inference mode, so
    that a table first made under ``torch.inference_mode`` (sampling) is an ordinary tensor
    that later autograd (training, in the same process) may save for backward."""

    @lru_cache(maxsize=64)
    @wraps(build)
    def cached(L: int):
        with torch.inference_mode(False):
            return build(L)

    return cached


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


@_index_cache
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


def _loop_assembly(theta: torch.Tensor, kappa: float) -> torch.Tensor:
    """The paper's assembly: per site and hop, the block from that site's angle, assigned.

    Each block is computed exactly as `hop_blocks` computes it (so the matrix equals the
    scatter one bit for bit), but from one selected angle at a time, and written with an
    assignment into a dense identity: 4 L^2 in-place copies (CopySlices) in the graph.
    """
    L = theta.shape[-1]
    if L < 3:
        raise ValueError(
            f"the loop assembly assigns each block once and needs L >= 3 (at L = {L} the "
            "forward and backward hops share a block); use assembly 'scatter'"
        )
    n = 2 * L * L
    cdtype = complex_dtype(theta)
    eye = torch.eye(2, dtype=cdtype)
    spin = [
        (-kappa * (eye - torch.tensor(PAULI[mu], dtype=cdtype) * (1 if d == 0 else -1))).to(
            theta.device
        )
        for mu, d in _HOPS
    ]
    D = torch.eye(n, dtype=cdtype, device=theta.device).repeat(theta.shape[0], 1, 1)
    for x0 in range(L):
        for x1 in range(L):
            x = x0 * L + x1
            for k, (mu, d) in enumerate(_HOPS):
                y = [x0, x1]
                y[mu] = (y[mu] + (1 if d == 0 else -1)) % L
                if d == 0:  # forward hop: U_mu(x)
                    angle = theta[:, mu, x0, x1]
                    wraps = mu == 0 and x0 == L - 1
                else:  # backward hop: U_mu(x - mu)^*
                    angle = -theta[:, mu, y[0], y[1]]
                    wraps = mu == 0 and x0 == 0
                phase = torch.complex(torch.cos(angle), torch.sin(angle))
                if mu == 0:  # antiperiodic in time (the paper multiplies every time hop)
                    phase = phase * (-1.0 if wraps else 1.0)
                col = 2 * (y[0] * L + y[1])
                D[:, 2 * x : 2 * x + 2, col : col + 2] = phase.reshape(-1, 1, 1) * spin[k]
    return D


def dirac_matrix(theta: torch.Tensor, kappa: float, assembly: str = "scatter") -> torch.Tensor:
    """The Wilson-Dirac matrix D, complex [B, 2V, 2V]; differentiable in theta."""
    _check_choice(assembly, ASSEMBLIES, "assembly")
    L, kappa = _check_dirac_input(theta, kappa)
    if assembly == "loop":
        return _loop_assembly(theta, kappa)
    blocks = hop_blocks(theta, kappa)
    return _scatter_blocks(blocks, _scatter_index(L), 2 * L * L, blocks.dtype)


@_index_cache
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
    index). Built directly from the 16 two-hop paths out of each odd site (no dense
    product). Only for assembly "scatter": the even-odd method is not the paper's, and the
    loop assembly (the paper's implementation) takes the determinant of the full D.
    """
    resolve_method("eo", assembly)
    L, kappa = _check_dirac_input(theta, kappa)
    _check_even(L)
    blocks = hop_blocks(theta, kappa)  # [B, 4, V, 2, 2]
    odd, mid, index = _schur_index(L)
    odd, mid = odd.to(theta.device), mid.to(theta.device)
    first = blocks[:, :, odd]  # D_oe blocks: [B, 4 (k1), V/2, 2, 2]
    second = blocks[:, :, mid]  # D_eo blocks at o + k1: [B, 4 (k2), 4 (k1), V/2, 2, 2]
    paths = -torch.einsum("bkost,bjkotu->bjkosu", first, second)
    return _scatter_blocks(paths, index, L * L, blocks.dtype)


def fermion_matrix(
    theta: torch.Tensor, kappa: float, method: str | None = None, assembly: str = "scatter"
) -> torch.Tensor:
    """The matrix whose determinant is det D: D itself ("full") or its Schur complement ("eo").

    `method` None is the assembly's own (`DEFAULT_METHOD`): "eo" for scatter, "full" for loop.
    """
    method = resolve_method(method, assembly)
    if method == "full":
        return dirac_matrix(theta, kappa, assembly)
    return schur_complement(theta, kappa, assembly)


def fermion_action(
    theta: torch.Tensor, kappa: float, method: str | None = None, assembly: str = "scatter"
) -> torch.Tensor:
    """-log det D^+ D = -2 log|det D| per configuration, real [B]; differentiable in theta."""
    _, logabsdet = linalg.slogdet(fermion_matrix(theta, kappa, method, assembly))
    return -2 * logabsdet
