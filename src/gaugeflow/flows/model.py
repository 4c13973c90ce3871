"""The flow: a stack of gauge-equivariant coupling layers, built from a JSON-able config.

log q(phi) = prior.log_prob(z) - log_det, where (phi, log_det) = flow(z); reverse gives
(z, log_det_reverse) with log_det_reverse = -log_det at the same point. With ``holonomy: true``
(not in the paper; off by default) two `HolonomyCoupling` layers (mu = 0, then mu = 1) follow
the coupling layers and shape the global Polyakov-loop angles, which plaquette-conditioned
couplings leave uniform. Weights are drawn from torch's global generator: call
torch.manual_seed before build_flow for reproducible ones (the holonomy layers draw theirs
after the couplings, so these are the same with and without them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..physics.u1 import check_theta
from ..runtime import resolve_device, resolve_dtype
from .coupling import GaugeEquivariantCoupling
from .holonomy import HolonomyCoupling
from .masks import check_lattice_size, layer_schedule
from .splines import MIN_BIN_FRACTION

__all__ = ["CONFIG_KEYS", "Flow", "build_flow", "default_config", "validate_config"]

#: keys of a flow config, with the paper's architecture as default values (L has none)
_PAPER: dict[str, Any] = {
    "L": None,
    "n_layers": 48,
    "n_bins": 8,
    "hidden_channels": 64,
    "kernel_size": 3,
    "dilations": [1, 2, 3],
    "loops": True,
    "holonomy": False,
    # not in the paper: every layer equivariant under charge conjugation theta -> -theta
    # (gaugeflow.flows.splines.charge_symmetric_params; the conditioners run on twice the batch)
    "charge_symmetric": False,
    "dtype": "float32",
    # as torch modules and UniformPrior: built on the CPU unless a device is named ("auto"
    # takes CUDA where present); with "auto" here, a flow built on a GPU machine met CPU inputs
    "device": "cpu",
}
CONFIG_KEYS: tuple[str, ...] = tuple(_PAPER)


def default_config(L: int) -> dict[str, Any]:
    """The paper's architecture at lattice size L (48 layers, 8 bins, 64 channels, ...)."""
    return validate_config({**_PAPER, "L": L})


def _positive_int(config: Mapping[str, Any], key: str, at_most: int | None = None) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"flow config key {key!r} must be a positive integer; got {value!r}")
    if at_most is not None and value > at_most:
        raise UserError(f"flow config key {key!r} must be at most {at_most}; got {value!r}")
    return value


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a flow config, fill in the paper's defaults, return a new plain dict."""
    if not isinstance(config, Mapping):
        raise UserError(f"flow config must be a mapping; got {type(config).__name__}")
    unknown = [key for key in config if key not in _PAPER]
    if unknown:
        raise UserError(
            f"unknown flow config key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(CONFIG_KEYS)}"
        )
    if config.get("L") is None:
        raise UserError("flow config lacks the required key 'L' (lattice size)")
    merged = {**_PAPER, **config}
    out: dict[str, Any] = {"L": check_lattice_size(merged["L"])}
    out["n_layers"] = _positive_int(merged, "n_layers")
    out["n_bins"] = _positive_int(merged, "n_bins", at_most=int(0.5 / MIN_BIN_FRACTION))
    out["hidden_channels"] = _positive_int(merged, "hidden_channels")
    out["kernel_size"] = _positive_int(merged, "kernel_size")
    if out["kernel_size"] % 2 == 0:
        raise UserError(f"flow config key 'kernel_size' must be odd; got {out['kernel_size']}")
    dilations = merged["dilations"]
    if isinstance(dilations, int) or not isinstance(dilations, (list, tuple)) or not dilations:
        raise UserError(f"flow config key 'dilations' must be a non-empty list; got {dilations!r}")
    out["dilations"] = [_positive_int({"dilations": d}, "dilations") for d in dilations]
    reach = max(out["dilations"]) * (out["kernel_size"] - 1) // 2
    if reach > out["L"]:
        raise UserError(
            f"circular padding of {reach} sites (kernel_size {out['kernel_size']}, dilation "
            f"{max(out['dilations'])}) exceeds the lattice size L={out['L']}"
        )
    for key in ("loops", "holonomy", "charge_symmetric"):
        if not isinstance(merged[key], bool):
            raise UserError(f"flow config key {key!r} must be true or false; got {merged[key]!r}")
        out[key] = merged[key]
    dtype = merged["dtype"]
    out["dtype"] = str(resolve_dtype(dtype)).removeprefix("torch.")
    device = merged["device"]
    resolve_device(device)  # raises UserError for a bad or unavailable device
    out["device"] = str(device)
    return out


class Flow(nn.Module):
    """Gauge-equivariant flow on [batch, 2, L, L] link angles; see the module docstring."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self._config = validate_config(config)
        cfg = self._config
        self.L: int = cfg["L"]
        self.layers = nn.ModuleList(
            GaugeEquivariantCoupling(
                cfg["L"],
                mu,
                k,
                n_bins=cfg["n_bins"],
                hidden_channels=cfg["hidden_channels"],
                kernel_size=cfg["kernel_size"],
                dilations=tuple(cfg["dilations"]),
                loops=cfg["loops"],
                charge_symmetric=cfg["charge_symmetric"],
            )
            for mu, k in layer_schedule(cfg["n_layers"])
        )
        # empty unless holonomy: a flow without them has the state_dict it always had
        self.holonomy_layers = nn.ModuleList(
            HolonomyCoupling(
                cfg["L"], mu, cfg["n_bins"], cfg["hidden_channels"], cfg["charge_symmetric"]
            )
            for mu in ((0, 1) if cfg["holonomy"] else ())
        )
        self.to(dtype=resolve_dtype(cfg["dtype"]), device=resolve_device(cfg["device"]))

    @property
    def config(self) -> dict[str, Any]:
        """A fresh JSON-able copy of the config; 'dtype' follows the parameters (after .double())."""
        return {
            **self._config,
            "dilations": list(self._config["dilations"]),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _check_input(self, theta: torch.Tensor) -> None:
        if check_theta(theta) != self.L:
            raise ValueError(
                f"flow is built for L={self.L}; got configurations of shape {tuple(theta.shape)}"
            )
        if theta.dtype != self.dtype:
            raise ValueError(f"flow has dtype {self.dtype}; got configurations of {theta.dtype}")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior sample z -> (phi, log|det d phi / d z|) per sample."""
        self._check_input(z)
        log_det = z.new_zeros(z.shape[0])
        for layer in [*self.layers, *self.holonomy_layers]:
            z, step = layer(z)
            log_det = log_det + step
        return z, log_det

    def reverse(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Configuration phi -> (z, log|det d z / d phi|) per sample."""
        self._check_input(phi)
        log_det = phi.new_zeros(phi.shape[0])
        for layer in reversed([*self.layers, *self.holonomy_layers]):
            phi, step = layer.reverse(phi)
            log_det = log_det + step
        return phi, log_det

    def describe(self, device: str | None = None) -> str:
        """A few lines on the architecture and size, for people (`device` overrides the shown one)."""
        cfg = self.config
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in self.layers]
        convs = [m for m in self.layers[0].net if isinstance(m, nn.Conv2d)]
        net = ", LeakyReLU, ".join(
            f"conv {c.in_channels}->{c.out_channels} k{c.kernel_size[0]} d{c.dilation[0]}"
            for c in convs
        )
        updates = cfg["n_layers"] / 8
        inputs = "frozen plaquettes" + (", 2x1 and 1x2 loops" if cfg["loops"] else "")
        lines = [
            f"gauge-equivariant flow, L = {cfg['L']}",
            f"  coupling layers: {cfg['n_layers']} (each link updated {updates:g} times)",
            f"  spline: circular rational-quadratic, {cfg['n_bins']} bins "
            f"({3 * cfg['n_bins']} parameters per active plaquette)",
            f"  conditioner: {net} (circular padding)",
            f"  conditioner inputs: cos, sin of {inputs}",
            f"  parameters: {self.n_parameters():,} ({per_layer[0]:,} per coupling layer)",
            f"  dtype {cfg['dtype']}, device {device or cfg['device']}",
        ]
        if self.holonomy_layers:
            size = sum(p.numel() for p in self.holonomy_layers.parameters())
            lines[-2:-2] = [
                f"  holonomy layers: 2 after the couplings (mu = 0, then 1; {size:,} parameters): "
                "a spline of the line-0",
                "    Polyakov-loop angle, all mu-links shifted by its change / L (not in the paper)",
            ]
        return "\n".join(lines)


def build_flow(config: Mapping[str, Any]) -> Flow:
    """A freshly initialised Flow for `config` (missing keys take the paper's values)."""
    return Flow(config)
