"""Symmetrised proposals: a flow's density averaged over symmetries of the target.

The Schwinger action on the L x L torus is invariant under lattice translations,
theta_mu(x) -> theta_mu(x + a) (the antiperiodic time boundary of the fermions is a twist
that a gauge transformation moves anywhere, and det D^dagger D is gauge invariant), under the
reflections of either axis (x_mu -> -x_mu, which reverses the links along mu) and under
charge conjugation, theta -> -theta (U -> U*: the plaquette action depends on cos P, and
det D^dagger D = |det D|^2 is unchanged). The tests check each of these on the action. A
trained flow has none of them: its coupling masks single out sites (the couplings are
invariant only under translations by multiples of 4) and a direction along each axis, the
holonomy layers single out line 0, and nothing ties q(theta) to q(-theta).

For a finite group G of such maps (each one a signed permutation of the angles, so
volume-preserving),

    q_G(phi) = (1 / |G|) sum_{g in G} q(g phi)

is again a normalised density, invariant under G, and it is sampled exactly by drawing
psi ~ q and g uniform in G and proposing phi = g psi (the density of g psi is
(1/|G|) sum_g q(g^-1 phi), the same sum since G is a group). Because the target P is
G-invariant, KL(q_G || P) <= KL(q || P) (convexity of KL in its first argument): the
symmetrised proposal is never worse, and importance weights P / q_G are those of an exact
sampler, so NMCMC and NIS stay exact. The cost is |G| - 1 reverse passes of the flow per
proposal (log q(phi) itself comes with the forward pass).

Groups are named by a spec: ``none``, or ``+``-joined parts among ``T`` (all L^2
translations), ``T2`` (translations by even vectors, (L/2)^2), ``T4`` (by multiples of 4,
(L/4)^2), ``P`` (the reflections of axis 0, of axis 1 and both: 4 elements) and ``C``
(charge conjugation, 2); the group is the product of the parts (translations and reflections
generate the lattice's own symmetry group), e.g. ``P+C`` has 8 elements and ``T+P+C`` 8 L^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where tensors are handled: the workflow parses specs
    import torch  # with this module and should not pay for importing torch

__all__ = [
    "SYMMETRY_TOKENS",
    "SymmetryGroup",
    "parse_symmetry",
    "symmetric_logq",
]

#: parts of a spec, in their canonical order: translation strides, then P and C
SYMMETRY_TOKENS: dict[str, int | None] = {"T": 1, "T2": 2, "T4": 4, "P": None, "C": None}

#: (shift along axis 0, shift along axis 1, reflect axis 0, reflect axis 1, sign)
Element = tuple[int, int, int, int, int]


def _reflect(theta: torch.Tensor, axis: int) -> torch.Tensor:
    """The configuration mirrored at x_axis = 0: x_axis -> -x_axis (mod L).

    A link along `axis` from x to x + axis_hat becomes the reversed link from -x - axis_hat to
    -x: theta'_axis(y) = -theta_axis(-y - axis_hat); the other direction's links only move:
    theta'_nu(y) = theta_nu(-y) (reflected coordinate only). On [B, 2, L, L] arrays, flipping
    axis `a` maps index i to L - 1 - i, i.e. to -i - 1, so the moved links need one roll.
    """
    import torch

    dim = theta.dim() - 2 + axis
    along = -torch.flip(theta.select(-3, axis), dims=(dim - 1,))
    across = torch.roll(torch.flip(theta.select(-3, 1 - axis), dims=(dim - 1,)), 1, dim - 1)
    parts = (along, across) if axis == 0 else (across, along)
    return torch.stack(parts, dim=-3)


@dataclass(frozen=True)
class SymmetryGroup:
    """Translations (by multiples of `stride`), reflections and charge conjugation."""

    spec: str
    L: int
    stride: int | None  # None: no translations
    charge: bool
    reflections: bool = False

    @property
    def elements(self) -> list[Element]:
        """All elements, the identity first. (a, b, r0, r1, c) reflects axis 0 if r0, then axis
        1 if r1, then translates by (a, b) (theta(x) -> theta(x + (a, b))), then multiplies
        by c."""
        shifts = [(0, 0)]
        if self.stride is not None:
            steps = range(0, self.L, self.stride)
            shifts = [(a, b) for a in steps for b in steps]
        mirrors = [(0, 0), (1, 0), (0, 1), (1, 1)] if self.reflections else [(0, 0)]
        signs = (1, -1) if self.charge else (1,)
        return [(a, b, r0, r1, c) for c in signs for r0, r1 in mirrors for a, b in shifts]

    @property
    def size(self) -> int:
        n = 1 if self.stride is None else (self.L // self.stride) ** 2
        return n * (4 if self.reflections else 1) * (2 if self.charge else 1)

    @property
    def trivial(self) -> bool:
        return self.size == 1

    @staticmethod
    def transform(theta: torch.Tensor, element: Element) -> torch.Tensor:
        """g theta for g = (a, b, r0, r1, c) (see `elements`); [B, 2, L, L], a new tensor."""
        import torch

        a, b, r0, r1, c = element
        out = theta
        if r0:
            out = _reflect(out, 0)
        if r1:
            out = _reflect(out, 1)
        if (a, b) != (0, 0):
            out = torch.roll(out, shifts=(-a, -b), dims=(-2, -1))
        if c == -1:
            return -out
        return out.clone() if out is theta else out

    def apply_random(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each configuration mapped by its own uniformly drawn element (one draw per row)."""
        import torch

        if self.trivial:
            return theta
        elements = self.elements
        pick = torch.randint(
            len(elements), (theta.shape[0],), generator=generator, device=generator.device
        ).to(theta.device)
        out = torch.empty_like(theta)
        for index in torch.unique(pick).tolist():
            rows = (pick == index).nonzero().squeeze(1)
            out[rows] = self.transform(theta.index_select(0, rows), elements[index])
        return out


def parse_symmetry(spec: str | None, L: int) -> SymmetryGroup:
    """The group named by `spec` on an L x L lattice; a clear UserError for a bad spec."""
    text = "none" if spec is None else str(spec).strip()
    if text.lower() == "none" or text == "":
        return SymmetryGroup("none", L, None, False, False)
    tokens = [t.strip() for t in text.split("+")]
    valid = ", ".join(SYMMETRY_TOKENS)
    unknown = [t for t in tokens if t not in SYMMETRY_TOKENS]
    if unknown:
        raise UserError(
            f"symmetry {spec!r}: unknown part(s) {', '.join(map(repr, unknown))}; use 'none' or "
            f"'+'-joined parts among {valid} (e.g. 'P+C')"
        )
    if len(set(tokens)) != len(tokens):
        raise UserError(f"symmetry {spec!r}: a part is named twice")
    strides = [SYMMETRY_TOKENS[t] for t in tokens if SYMMETRY_TOKENS[t] is not None]
    if len(strides) > 1:
        raise UserError(f"symmetry {spec!r}: name one translation group (T, T2 or T4), not several")
    stride = strides[0] if strides else None
    if stride is not None and L % stride:
        raise UserError(
            f"symmetry {spec!r}: translations by {stride} need L divisible by it; L={L}"
        )
    order = [t for t in SYMMETRY_TOKENS if t in tokens]  # canonical spelling: T.., P, C
    return SymmetryGroup("+".join(order), L, stride, "C" in tokens, "P" in tokens)


def symmetric_logq(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    phi: torch.Tensor,
    logq: torch.Tensor,
    group: SymmetryGroup,
    max_batch: int = 1024,
) -> torch.Tensor:
    """log q_G(phi) = logmeanexp_g log q(g phi), float64, [B].

    ``logq`` is log q(phi) (the identity's term, from the forward pass); ``log_density``
    evaluates log q of a batch of configurations (the flow's reverse pass). The other
    |G| - 1 images are evaluated in chunks of at most `max_batch` configurations.
    """
    import torch

    terms = [logq.to(torch.float64)]
    others = group.elements[1:]
    per_call = max(1, max_batch // max(1, phi.shape[0]))
    for start in range(0, len(others), per_call):
        chunk = others[start : start + per_call]
        images = torch.cat([group.transform(phi, g) for g in chunk])
        values = log_density(images).to(torch.float64)
        terms.extend(values.split(phi.shape[0]))
    stacked = torch.stack(terms)
    return torch.logsumexp(stacked, dim=0) - math.log(group.size)
