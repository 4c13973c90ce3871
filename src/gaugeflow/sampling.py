"""Neural MCMC: independence Metropolis with a flow as proposal, and neural importance sampling.

A *proposal source* is any callable ``source(n) -> Proposals`` giving, for n new independent
configurations, their log q, log P and observables. The Metropolis chain and NIS only ever see
these numbers, so they are tested against exact toy sources and run unchanged with a flow
(`FlowProposer`). Configurations themselves are never stored.

Chain conventions (paper eq. 3): proposals are accepted with probability
min(1, exp([log P(x') - log q(x')] - [log P(x) - log q(x)])), decided sequentially in log
space. The first step is the first proposal, accepted by construction. On a rejection the
previous configuration's log q, log P and observables are repeated exactly: nothing is
recomputed, and the repeated values are the ones of the configuration the chain is at.
Same seed, batch size and device give the same chain.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .io import atomic_path
from .modelfile import REQUIRED_KEYS
from .symmetry import SymmetryGroup, parse_symmetry, symmetric_logq

__all__ = [
    "Proposals",
    "ProposalSource",
    "FlowProposer",
    "flow_logq",
    "MODEL_KEYS",
    "OBSERVABLE_KEYS",
    "load_model",
    "metropolis_step_indices",
    "run_chain",
    "independence_metropolis",
    "draw_proposals",
    "chain_metadata",
    "save_chain",
    "open_model",
    "sample_model",
    "model_acceptance",
    "model_nis",
    "nis_from_chain",
    "chain_scalars",
    "PROPOSAL_PREFIX",
]

#: Keys a model file (`gaugeflow.modelfile.ModelFile`) must hold.
MODEL_KEYS = REQUIRED_KEYS

#: Observables recorded per step (keys of `physics.observables.measure`).
OBSERVABLE_KEYS = ("plaquette", "condensate", "sign", "topological_charge")

#: Prefix of a chain file's per-proposal arrays (``proposal_logq``, ``proposal_plaquette``, ...).
PROPOSAL_PREFIX = "proposal_"


@dataclass
class Proposals:
    """log q, log P (float64, shape [n]) and named observables (float64, [n]) of n proposals."""

    logq: np.ndarray
    logp: np.ndarray
    observables: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.logq.shape[0])

    @staticmethod
    def concatenate(parts: list[Proposals]) -> Proposals:
        keys = parts[0].observables.keys() if parts else ()
        return Proposals(
            logq=np.concatenate([p.logq for p in parts]),
            logp=np.concatenate([p.logp for p in parts]),
            observables={k: np.concatenate([p.observables[k] for p in parts]) for k in keys},
        )


ProposalSource = Callable[[int], Proposals]


def flow_logq(flow: torch.nn.Module, prior: Any, phi: torch.Tensor) -> torch.Tensor:
    """log q(phi) of given configurations through the flow's reverse pass, [B]."""
    z, log_det = flow.reverse(phi)
    return prior.log_prob(z) + log_det


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach()
    if x.is_complex():
        x = x.real
    return x.to("cpu", torch.float64).numpy()


class FlowProposer:
    """Proposal source drawing from a trained flow and evaluating the target on the proposals.

    With ``with_observables`` one call of `physics.observables.measure` per batch gives both
    log P = -S and the observables (one factorisation per configuration); without, only the
    action is evaluated (enough for an acceptance rate). Configurations are cast to
    ``measure_dtype`` before the target is evaluated; log q stays in the flow's precision.
    With a non-trivial ``symmetry`` (`gaugeflow.symmetry`) the proposal is the symmetrised
    flow: each configuration is mapped by a random element of the group and log q is that of
    the mixture q_G (|G| - 1 extra reverse passes per proposal).
    """

    def __init__(
        self,
        flow: torch.nn.Module,
        prior: Any,
        action: Mapping[str, Any],
        generator: torch.Generator,
        with_observables: bool = True,
        measure_dtype: torch.dtype = torch.float64,
        symmetry: SymmetryGroup | None = None,
    ) -> None:
        self.flow = flow
        self.symmetry = symmetry if symmetry is not None and not symmetry.trivial else None
        self.prior = prior
        self.beta = float(action["beta"])
        self.kappa = float(action["kappa"])
        self.action_options = {k: action[k] for k in ("method", "assembly") if k in action}
        self.generator = generator
        self.with_observables = with_observables
        self.measure_dtype = measure_dtype
        self._action: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        if self._action is None:
            from .physics.action import SchwingerAction

            self._action = SchwingerAction(self.beta, self.kappa, **self.action_options)
        return -self._action(theta)

    def _flow_logq(self, phi: torch.Tensor) -> torch.Tensor:
        return flow_logq(self.flow, self.prior, phi)

    def __call__(self, n: int) -> Proposals:
        with torch.inference_mode():
            z = self.prior.sample(n, generator=self.generator)
            phi, log_det = self.flow(z)
            logq = self.prior.log_prob(z) - log_det
            if self.symmetry is not None:
                logq = symmetric_logq(self._flow_logq, phi, logq, self.symmetry)
                phi = self.symmetry.apply_random(phi, self.generator)
            theta = phi.to(self.measure_dtype)
            if not self.with_observables:
                return Proposals(_to_numpy(logq), _to_numpy(self._log_prob(theta)))
            from .physics.observables import measure

            obs = measure(theta, self.beta, self.kappa, **self.action_options)
            values = {k: _to_numpy(obs[k]) for k in OBSERVABLE_KEYS}
            return Proposals(_to_numpy(logq), -_to_numpy(obs["action"]), values)


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any, dict[str, Any], dict[str, Any]]:
    """Rebuild a trained flow from a model file: (flow in eval mode, prior, action, config)."""
    from .flows.prior import UniformPrior
    from .modelfile import ModelFile
    from .runtime import resolve_device

    device = resolve_device(device)
    model = ModelFile.load(path, map_location=device)
    flow = model.build_flow(device)
    dtype = next((p.dtype for p in flow.parameters() if p.is_floating_point()), torch.float32)
    prior = UniformPrior(model.L, dtype=dtype, device=device)
    return flow, prior, dict(model.action), dict(model.config)


def metropolis_step_indices(
    log_weights: np.ndarray, log_u: np.ndarray, current: float, first: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Sequential independence-Metropolis decisions for one batch of proposals.

    ``log_weights`` = log P - log q of the proposals, ``log_u`` = log of uniform draws, and
    ``current`` the log weight of the configuration the chain is at. Returns ``accepted``
    (bool [n]) and ``index`` (int [n]): the proposal the chain sits on after each step, -1 for
    the configuration it came in with. ``first`` accepts step 0 unconditionally.
    """
    weights = np.asarray(log_weights, dtype=np.float64).tolist()
    draws = np.asarray(log_u, dtype=np.float64).tolist()
    n = len(weights)
    accepted = np.zeros(n, dtype=bool)
    index = np.empty(n, dtype=np.int64)
    # a NaN log weight compares False below, so such proposals are always rejected; a chain
    # sitting on one (only possible as its forced first step) moves to the next finite proposal
    current = -math.inf if math.isnan(current) else float(current)
    at = -1
    for i in range(n):
        lw = weights[i]
        if (first and i == 0) or draws[i] < lw - current:
            accepted[i] = True
            current = -math.inf if math.isnan(lw) else lw
            at = i
        index[i] = at
    return accepted, index


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="cfg", disable=not (enabled and sys.stderr.isatty()))


def run_chain(
    source: ProposalSource,
    n: int,
    rng: np.random.Generator,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], Proposals]:
    """Run an independence Metropolis chain of n steps on proposals from ``source``.

    Returns the chain (per-step arrays ``accepted``, ``logq``, ``logp`` and one per
    observable) and the n proposals it was offered, in order (usable for NIS as well).
    """
    if n < 1 or batch_size < 1:
        raise UserError(f"chain length and batch size must be positive; got n={n}, {batch_size}")
    parts: list[dict[str, np.ndarray]] = []
    offered: list[Proposals] = []
    state: dict[str, float] | None = None  # values of the configuration the chain is at
    done = 0
    with _progress(n, progress, "sampling") as bar:
        while done < n:
            m = min(batch_size, n - done)
            props = source(m)
            if len(props) != m:
                raise ValueError(f"proposal source returned {len(props)} proposals, asked {m}")
            columns = {"logq": props.logq, "logp": props.logp, **props.observables}
            log_w = props.logp - props.logq
            log_u = np.log(rng.random(m))
            current = -math.inf if state is None else state["logp"] - state["logq"]
            accepted, index = metropolis_step_indices(log_w, log_u, current, first=state is None)
            part: dict[str, np.ndarray] = {"accepted": accepted}
            for key, values in columns.items():
                carried = np.nan if state is None else state[key]
                # slot 0 holds the incoming configuration, so index -1 maps to it
                extended = np.concatenate(([carried], np.asarray(values, dtype=np.float64)))
                part[key] = extended[index + 1]
            state = {key: float(part[key][-1]) for key in columns}
            parts.append(part)
            offered.append(props)
            done += m
            bar.update(m)
    chain = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return chain, Proposals.concatenate(offered)


def independence_metropolis(
    source: ProposalSource,
    n: int,
    rng: np.random.Generator,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The chain of `run_chain` without the proposals."""
    return run_chain(source, n, rng, batch_size, progress)[0]


def draw_proposals(
    source: ProposalSource, n: int, batch_size: int = 256, progress: bool = False
) -> Proposals:
    """n independent proposals from ``source`` in batches (for neural importance sampling)."""
    if n < 1 or batch_size < 1:
        raise UserError(f"sample size and batch size must be positive; got n={n}, {batch_size}")
    parts: list[Proposals] = []
    with _progress(n, progress, "proposals") as bar:
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            parts.append(source(m))
            bar.update(m)
    return Proposals.concatenate(parts)


def chain_metadata(
    *,
    seed: int,
    model: str | Path,
    beta: float,
    kappa: float,
    L: int,
    config: Mapping[str, Any],
    batch_size: int,
    symmetry: str = "none",
    symmetry_size: int = 1,
) -> dict[str, Any]:
    """Scalar metadata stored beside a chain's arrays (config as a JSON string)."""
    return {
        "symmetry": str(symmetry),
        "symmetry_size": int(symmetry_size),
        "seed": int(seed),
        "model": str(model),
        "beta": float(beta),
        "kappa": float(kappa),
        "L": int(L),
        "batch_size": int(batch_size),
        "config": json.dumps(dict(config), sort_keys=True, default=str),
    }


def save_chain(path: str | Path, chain: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write a chain and its metadata atomically as .npz (no pickles needed to read it)."""
    clash = set(chain) & set(meta)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} clash with chain arrays")
    arrays = {k: np.asarray(v) for k, v in chain.items()}
    arrays.update({k: np.asarray(v) for k, v in meta.items()})
    # np.savez appends ".npz" to a path not ending in it (as atomic_path's temporary name
    # does not), so it is handed an open file instead of a path
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def open_model(
    path: str | Path,
    seed: int,
    device: str | torch.device = "cpu",
    beta: float | None = None,
    kappa: float | None = None,
    with_observables: bool = True,
    measure_dtype: torch.dtype = torch.float64,
    symmetry: str | None = None,
) -> tuple[FlowProposer, dict[str, Any]]:
    """A seeded proposal source from a model file, plus metadata describing the run.

    ``beta`` / ``kappa`` override the target the model was trained for (the model's own
    action is kept in the metadata under ``trained_action``). ``symmetry`` names a group
    (`gaugeflow.symmetry.parse_symmetry`, e.g. ``'T+C'``) over which the proposal density
    is averaged; None or ``'none'``: the flow itself.
    """
    from .runtime import resolve_device

    device = resolve_device(device)
    flow, prior, action, config = load_model(path, device)
    group = parse_symmetry(symmetry, prior.L)
    target = dict(action)
    if beta is not None:
        target["beta"] = float(beta)
    if kappa is not None:
        target["kappa"] = float(kappa)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    source = FlowProposer(
        flow, prior, target, generator, with_observables, measure_dtype, symmetry=group
    )
    meta = {
        "seed": int(seed),
        "model": str(path),
        "beta": float(target["beta"]),
        "kappa": float(target["kappa"]),
        "L": int(prior.L),
        "trained_action": action,
        "device": str(device),
        "config": config,
        "symmetry": group.spec,
        "symmetry_size": group.size,
    }
    return source, meta


def sample_model(
    path: str | Path,
    n: int,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    beta: float | None = None,
    kappa: float | None = None,
    progress: bool = False,
    symmetry: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """An n-step independence Metropolis chain with a model's flow as proposal.

    Besides the chain's arrays, ``proposal_logq`` / ``proposal_logp`` and
    ``proposal_<observable>`` hold log q, log P and the observables of the proposal made at
    each step: the n independent proposals the chain was offered, so that the chain file also
    gives the NIS estimates (`nis_from_chain`) without drawing them again.
    """
    source, meta = open_model(
        path, seed, device, beta, kappa, with_observables=True, symmetry=symmetry
    )
    chain, offered = run_chain(source, n, np.random.default_rng(seed), batch_size, progress)
    proposals = {"logq": offered.logq, "logp": offered.logp, **offered.observables}
    for key, values in proposals.items():
        chain[PROPOSAL_PREFIX + key] = values
    return chain, meta


def chain_scalars(data: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The scalar metadata of a loaded chain file (`save_chain`), JSON strings decoded."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if value.ndim:
            continue
        item = value.item()
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except json.JSONDecodeError:
                pass
        out[key] = item
    return out


def model_acceptance(
    path: str | Path,
    n: int = 2**16,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    beta: float | None = None,
    kappa: float | None = None,
    progress: bool = False,
    symmetry: str | None = None,
) -> dict[str, Any]:
    """Acceptance rate of an n-step chain (paper fig. 2 right); only the action is evaluated.

    ``ess`` is the importance-sampling ESS of the chain's n fresh proposals (no extra cost).
    """
    from .analysis import acceptance_rate, bridges, ess

    source, meta = open_model(
        path, seed, device, beta, kappa, with_observables=False, symmetry=symmetry
    )
    chain, offered = run_chain(source, n, np.random.default_rng(seed), batch_size, progress)
    br = bridges(chain["accepted"])
    return {
        "acceptance": acceptance_rate(chain["accepted"]),
        "ess": ess(offered.logp - offered.logq),
        "n": int(n),
        "longest_bridge": br["longest"],
        **meta,
    }


def model_nis(
    path: str | Path,
    n: int,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    beta: float | None = None,
    kappa: float | None = None,
    progress: bool = False,
    symmetry: str | None = None,
) -> dict[str, Any]:
    """Neural importance sampling from n proposals: F = -log Z, ESS and reweighted observables.

    Weights w = exp(log P - log q) are positive (two flavours: det D^dagger D >= 0); the sign
    sigma is reweighted as an observable. See `analysis.nis_estimates`.
    """
    from .analysis import nis_estimates

    source, meta = open_model(
        path, seed, device, beta, kappa, with_observables=True, symmetry=symmetry
    )
    props = draw_proposals(source, n, batch_size, progress)
    return {**nis_estimates(props.logq, props.logp, props.observables), **meta}


def nis_from_chain(path: str | Path) -> dict[str, Any]:
    """The NIS estimates of `model_nis` from the proposals a chain file (`sample_model`) keeps.

    A chain's proposals are independent draws of the (symmetrised) flow, the same ones
    `model_nis` draws with the same model, seed, batch size and device: the result is the
    same, without a second pass through the flow and the fermion determinants. Metadata
    (seed, model, beta, kappa, L, symmetry, config) come from the chain file.
    """
    from .analysis import nis_estimates
    from .io import load_npz

    keys = tuple(PROPOSAL_PREFIX + k for k in ("logq", "logp", *OBSERVABLE_KEYS))
    try:
        data = load_npz(path, keys=keys, what="chain file")
    except UserError as exc:
        raise UserError(
            f"{exc}. Chain files written before the proposals' observables were kept cannot "
            f"give NIS estimates: run `gaugeflow sample` again, or `gaugeflow nis --model`"
        ) from None
    lengths = {k: data[k].shape for k in keys}
    if len(set(lengths.values())) != 1 or len(data[keys[0]].shape) != 1:
        raise UserError(
            f"chain file {path}: proposal arrays must be 1-d of one length; got {lengths}"
        )
    observables = {k: data[PROPOSAL_PREFIX + k] for k in OBSERVABLE_KEYS}
    result = nis_estimates(data[keys[0]], data[keys[1]], observables)
    result.update({k: v for k, v in chain_scalars(data).items() if k not in result})
    result["chain"] = str(path)
    return result
