"""The prior: independent uniform link angles on [0, 2pi)^(2V)."""

from __future__ import annotations

import math

import torch

from ..physics.u1 import check_theta
from ..runtime import resolve_device, resolve_dtype
from .masks import check_lattice_size

__all__ = ["UniformPrior"]


class UniformPrior:
    """Uniform angles on the torus; densities w.r.t. the Lebesgue measure on [0, 2pi)^(2V)."""

    def __init__(
        self,
        L: int,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.L = check_lattice_size(L)
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.n_links = 2 * L * L
        self._log_density = -self.n_links * math.log(2 * math.pi)

    def __repr__(self) -> str:
        return f"UniformPrior(L={self.L}, dtype={self.dtype}, device={self.device})"

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n configurations of shape [n, 2, L, L] (drawn on the generator's device, then moved)."""
        where = generator.device if generator is not None else self.device
        u = torch.rand((n, 2, self.L, self.L), generator=generator, dtype=self.dtype, device=where)
        z = 2 * math.pi * u
        # u just below 1 can round up to 2pi in float32; the interval is half open
        return z.masked_fill_(z >= 2 * math.pi, 0.0).to(self.device)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """-2V log(2pi) for every configuration in the batch, shape [B]."""
        if check_theta(z) != self.L:
            raise ValueError(
                f"prior is for L={self.L}; got configurations of shape {tuple(z.shape)}"
            )
        return torch.full((z.shape[0],), self._log_density, dtype=z.dtype, device=z.device)
