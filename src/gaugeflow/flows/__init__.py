"""Gauge-equivariant normalizing flows for U(1) links (paper appendix A).

`UniformPrior` draws z; `build_flow(config)` / `default_config(L)` make the `Flow` that maps z to
configurations phi with log q(phi) = prior.log_prob(z) - log_det.
"""

from .coupling import GaugeEquivariantCoupling
from .holonomy import HolonomyCoupling
from .model import CONFIG_KEYS, Flow, build_flow, default_config, validate_config
from .prior import UniformPrior

__all__ = [
    "CONFIG_KEYS",
    "Flow",
    "GaugeEquivariantCoupling",
    "HolonomyCoupling",
    "UniformPrior",
    "build_flow",
    "default_config",
    "validate_config",
]
