"""Numbers quoted in the paper's text, as LaTeX macros computed from the workflow's results.

Every macro the paper uses is always defined: when a result is absent (an estimator not
configured, a run that diverged), its macro says so instead of breaking the LaTeX build.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from ..choices import ESTIMATORS
from ..errors import UserError
from .latex import escape, format_number
from .paper_data import PAPER_ESTIMATORS

__all__ = ["NA", "SETTINGS", "GROUP_SETTINGS", "check_settings", "value_error", "build_macros"]

NA = r"\textrm{n/a}"  # valid in text and in math
# estimator -> its part of a macro name (letters only)
_EST = dict(zip(ESTIMATORS, ("Rt", "Re", "Pg"), strict=True))
_GROUPS = {"main": "Main", "large": "Large"}


def value_error(mean: float | None, error: float | None) -> str:
    """'0.123 ± 0.004' (as \\ensuremath, so usable in text and math), error to two digits."""
    if mean is None or not math.isfinite(float(mean)):
        return NA
    if error is None or not math.isfinite(float(error)) or error <= 0:
        return f"\\ensuremath{{{format_number(mean)}}}"
    decimals = max(0, 1 - math.floor(math.log10(float(error))))
    return f"\\ensuremath{{{float(mean):.{decimals}f} \\pm {float(error):.{decimals}f}}}"


def _percent(x: float | None) -> str:
    return NA if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.1f}\\%"


#: the run settings the macros quote, as `build_macros` takes them: key -> macro
SETTINGS = {
    "scale": "gfScale",
    "device": "gfDevice",
    "beta": "gfBeta",
    "kappa": "gfKappa",
    "n_layers": "gfLayers",
    "hidden": "gfHidden",
    "ess_window": "gfWindow",
    "snapshot_every": "gfSnapshotEvery",
    "acceptance_samples": "gfAccSamples",
    "bridge_min": "gfBridgeMin",
    "measure_steps": "gfMeasureSteps",
    "holonomy": "gfHolonomyClause",
    "charge_symmetric": "gfChargeClause",
}
#: per training group ('main', 'large'): L, steps, batch_size, n_batches, chain_length, and
#: the runs that train another number of steps (steps_by_estimator: {estimator: steps};
#: amp_steps: steps of every run with amp)
GROUP_SETTINGS = (
    "L", "steps", "batch_size", "n_batches", "chain_length", "steps_by_estimator", "amp_steps"
)  # fmt: skip
#: estimator -> its name in the paper's text
_EST_TEXT = {"rt": r"\rt{}", "reinforce": r"\RE{}", "path": "the path gradient"}


def steps_note(group: Mapping) -> str:
    """' (\\RE{} without amp: 2400; with amp: 300)': the runs whose steps differ, or ''."""
    amp_steps = group.get("amp_steps")
    parts = []
    for est, steps in (group.get("steps_by_estimator") or {}).items():
        if est not in _EST_TEXT:
            raise UserError(f"macro settings: steps_by_estimator names no estimator: {est!r}")
        parts.append(f"{_EST_TEXT[est]}{' without amp' if amp_steps else ''}: {int(steps)}")
    if amp_steps:
        parts.append(f"with amp: {int(amp_steps)}")
    return f" ({'; '.join(parts)})" if parts else ""


_TEXT_SETTINGS = ("scale", "device")
#: after "this build trains a flow of N layers and H channels" when the flow has them
HOLONOMY_CLAUSE = (
    ", followed by two holonomy layers (not in the paper) that shape the two Polyakov-loop "
    "angles, which couplings conditioned on plaquettes leave uniform"
)
#: after the architecture's description when every layer is C-equivariant
CHARGE_CLAUSE = (
    "; every layer is equivariant under charge conjugation $\\theta\\to-\\theta$ (not in the "
    "paper), so the flow's density is exactly invariant under it"
)


def check_settings(settings: Mapping) -> None:
    """UserError naming any key `build_macros` does not know (a misspelling would be n/a)."""
    unknown = sorted(set(settings) - set(SETTINGS) - {"groups"})
    groups = settings.get("groups") or {}
    unknown += [f"groups.{g}" for g in sorted(set(groups) - set(_GROUPS))]
    for g, values in groups.items():
        unknown += [f"groups.{g}.{k}" for k in sorted(set(values) - set(GROUP_SETTINGS))]
    if unknown:
        raise UserError(f"macro settings: unknown key(s) {unknown}")


def _settings_macros(settings: Mapping) -> dict[str, str]:
    out = {}
    for key, name in SETTINGS.items():
        if key in _TEXT_SETTINGS:
            out[name] = escape(settings.get(key, ""))
        elif key == "holonomy":
            out[name] = HOLONOMY_CLAUSE if settings.get(key) else ""
        elif key == "charge_symmetric":
            out[name] = CHARGE_CLAUSE if settings.get(key) else ""
        else:
            out[name] = str(settings.get(key, NA))
    groups = settings.get("groups") or {}
    for key, name in _GROUPS.items():
        group = groups.get(key) or {}
        out[f"gfL{name}"] = str(group.get("L", NA))
        out[f"gfSteps{name}"] = str(group.get("steps", NA))
        out[f"gfStepsNote{name}"] = steps_note(group)
        bs, nb = group.get("batch_size"), group.get("n_batches", 1)
        out[f"gfBatch{name}"] = f"{nb}$\\times${bs}" if bs else NA
        out[f"gfChain{name}"] = str(group.get("chain_length", NA))
    return out


def _training_macros(group: str, summary: pd.DataFrame | None) -> dict[str, str]:
    """Final running ESS per estimator and amp (best over seeds), or the run's fate."""
    out = {}
    for est, est_name in _EST.items():
        for amp in (False, True):
            name = f"gfEss{_GROUPS[group]}{est_name}{'Amp' if amp else ''}"
            out[name] = NA
            if summary is None or summary.empty:
                continue
            rows = summary[(summary["estimator"] == est) & (summary["amp"].astype(bool) == amp)]
            if rows.empty:
                continue
            done = rows[rows["status"] == "completed"]
            if done.empty:
                first = rows.iloc[0]
                out[name] = f"{escape(first['status'])} (step {first['last_step']})"
            else:
                out[name] = format_number(done["final_ess"].max(), 2)
    # "(X with amp)" after the RE number, or nothing where RE did not run with amp (the CPU
    # demo trains the larger lattice without amp: emulated bfloat16 is slow on most CPUs)
    amp = out[f"gfEss{_GROUPS[group]}ReAmp"]
    out[f"gfEss{_GROUPS[group]}ReAmpClause"] = "" if amp == NA else f" ({amp} with amp)"
    return out


_SYMMETRY_WORDS = {
    "T": "all translations",
    "T2": "the translations by even vectors",
    "T4": "the translations by multiples of 4",
    "P": "the reflections of both axes",
    "C": "charge conjugation",
}


def symmetry_clause(spec: str | None, size: int | None) -> str:
    """'' for plain flow proposals, else a clause naming the group the proposals average over."""
    if not spec or spec == "none":
        return ""
    parts = " and ".join(_SYMMETRY_WORDS.get(t, escape(t)) for t in str(spec).split("+"))
    return (
        f", with the flow's density averaged over {parts} ($|G| = {size}$; an exact proposal "
        "for this target, not in the paper, see Sec.~\\ref{sec:symmetry})"
    )


def _chain_macros(group: str, analysis: Mapping | None, nis: Mapping | None) -> dict[str, str]:
    name = _GROUPS[group]
    a = analysis or {}

    def obs(key: str) -> Mapping:
        return a.get(key) or {}

    cond = obs("condensate")
    bridges = a.get("bridges") or {}
    long_runs = bridges.get("long_lengths", bridges.get("lengths_over_100"))
    out = {
        f"gfAcc{name}": _percent(a.get("acceptance")),
        f"gfTauCond{name}": value_error(cond.get("tau_int"), cond.get("tau_int_error")),
        f"gfCond{name}": value_error(cond.get("mean"), cond.get("error")),
        f"gfSigma{name}": value_error(obs("sign").get("mean"), obs("sign").get("error")),
        f"gfPlaq{name}": value_error(obs("plaquette").get("mean"), obs("plaquette").get("error")),
        f"gfBridges{name}": str(len(long_runs)) if long_runs is not None else NA,
        f"gfLongest{name}": str(bridges.get("longest", NA)),
    }
    out[f"gfSymClause{name}"] = symmetry_clause(a.get("symmetry"), a.get("symmetry_size"))
    n = nis or {}
    out[f"gfFreeEnergy{name}"] = value_error(n.get("free_energy"), n.get("free_energy_error"))
    out[f"gfNisEss{name}"] = format_number(n.get("ess"), 2) if n.get("ess") is not None else NA
    from . import reliability  # unreliable estimates say so (issue 17)

    out.update(reliability.chain_macros(name, out, a, n))
    return out


def _ok(x: object) -> float | None:
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _timing_macros(table1: pd.DataFrame | None) -> dict[str, str]:
    """Speed-up of RE over r.t. (loop) at the largest L where both ran."""
    out = {"gfSpeedupL": NA, "gfSpeedupRe": NA, "gfSpeedupReAmp": NA, "gfScatterGainRt": NA}
    if table1 is None or table1.empty or "rt_loop_seconds" not in table1:
        return out
    both = table1[table1["rt_loop_seconds"].map(_ok).notna()]
    if "reinforce_loop_seconds" in both:
        both = both[both["reinforce_loop_seconds"].map(_ok).notna()]
    if both.empty:
        return out
    row = both.sort_values(["L", "batch_size"]).iloc[-1]
    rt = float(row["rt_loop_seconds"])
    out["gfSpeedupL"] = str(int(row["L"]))
    for col, name in (
        ("reinforce_loop_seconds", "gfSpeedupRe"),
        ("reinforce_amp_loop_seconds", "gfSpeedupReAmp"),
    ):
        value = _ok(row.get(col))
        if value:
            out[name] = format_number(rt / value, 3)
    scatter = _ok(row.get("rt_scatter_seconds"))
    if scatter:
        out["gfScatterGainRt"] = format_number(rt / scatter, 3)
    return out


def _dag_macros(table3: pd.DataFrame | None) -> dict[str, str]:
    out = {}
    for est in PAPER_ESTIMATORS:  # the estimators of the paper's Table 3
        est_name = _EST[est]
        for asm, asm_name in (("loop", ""), ("scatter", "Scatter")):
            for part in ("A", "B"):
                out[f"gfDag{est_name}{asm_name}{part}"] = NA
            if table3 is None or table3.empty:
                continue
            rows = table3[(table3["estimator"] == est) & (table3["assembly"] == asm)]
            if "source" in rows:
                rows = rows[rows["source"] == "ours"]
            if rows.empty:
                continue
            a, b = _ok(rows.iloc[0]["fit_a"]), _ok(rows.iloc[0]["fit_b"])
            if a is not None and b is not None:
                out[f"gfDag{est_name}{asm_name}A"] = format_number(a, 3)
                out[f"gfDag{est_name}{asm_name}B"] = format_number(b, 5)
    return out


def _memory_macros(table5: pd.DataFrame | None) -> dict[str, str]:
    """RE's saved-tensor memory as a fraction of r.t.'s (M1, loop), first row where both ran."""
    out = {"gfMemRatio": NA, "gfMemL": NA}
    if table5 is None or table5.empty:
        return out
    for _, row in table5.iterrows():
        rt, re = _ok(row.get("rt_loop_M1_GiB")), _ok(row.get("reinforce_loop_M1_GiB"))
        if rt and re:
            out["gfMemRatio"] = f"{100 * re / rt:.0f}\\%"
            out["gfMemL"] = str(int(row["L"]))
            break
    return out


def build_macros(
    settings: Mapping,
    provenance: Mapping | None = None,
    training: Mapping[str, pd.DataFrame | None] | None = None,
    analyses: Mapping[str, Mapping | None] | None = None,
    nis: Mapping[str, Mapping | None] | None = None,
    table1: pd.DataFrame | None = None,
    table3: pd.DataFrame | None = None,
    table5: pd.DataFrame | None = None,
) -> dict[str, str]:
    """All macros the paper uses; groups are 'main' (Figs. 2, 3) and 'large' (Figs. 4, 5).

    `settings` holds the run settings quoted in the text: the keys of `SETTINGS` and
    ``groups: {main: {...}, large: {...}}`` with the keys of `GROUP_SETTINGS` (the workflow
    passes them; this module does not know its config layout). Absent ones read n/a.
    """
    check_settings(settings)
    training, analyses, nis = training or {}, analyses or {}, nis or {}
    macros = _settings_macros(settings)
    prov = provenance or {}
    macros["gfGitDescribe"] = escape(prov.get("git_describe", NA))
    macros["gfTorchVersion"] = escape((prov.get("packages") or {}).get("torch") or NA)
    for group in _GROUPS:
        macros.update(_training_macros(group, training.get(group)))
        macros.update(_chain_macros(group, analyses.get(group), nis.get(group)))
    macros.update(_timing_macros(table1))
    macros.update(_dag_macros(table3))
    macros.update(_memory_macros(table5))
    return macros
