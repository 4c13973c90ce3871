"""`gaugeflow flow-info`: the flow's architecture and parameter count."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import read_json, require_file

__all__ = ["register", "load_flow_config", "run_flow_info"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flow-info",
        help="print the flow architecture and its parameter count",
        description=(
            "Build the gauge-equivariant flow (on the CPU) and print its architecture and "
            "parameter count. Without options: the paper's architecture at L = 8. Options "
            "override values from --config."
        ),
    )
    parser.add_argument("--L", type=int, default=None, help="lattice size (default 8)")
    parser.add_argument("--n-layers", type=int, default=None, help="coupling layers (paper: 48)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden channels (paper: 64)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON or YAML flow config (its keys, or a mapping under a top-level 'flow' key)",
    )
    parser.set_defaults(func=run_flow_info)


def load_flow_config(path: Path) -> dict[str, Any]:
    """A flow config from a JSON or YAML file; a top-level 'flow' section is used if present."""
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(require_file(path, "flow config").read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"flow config {path} is not valid YAML: {exc}") from exc
    else:
        data = read_json(path, "flow config")
    if isinstance(data, dict) and isinstance(data.get("flow"), dict):
        data = data["flow"]
    if not isinstance(data, dict):
        raise UserError(f"flow config {path} must hold a mapping of flow keys")
    return data


def run_flow_info(args: argparse.Namespace) -> int:
    from ..flows import build_flow

    config = load_flow_config(args.config) if args.config else {}
    overrides = {"L": args.L, "n_layers": args.n_layers, "hidden_channels": args.hidden}
    config.update({key: value for key, value in overrides.items() if value is not None})
    config.setdefault("L", 8)
    flow = build_flow({**config, "device": "cpu"})  # counting needs no accelerator
    print(flow.describe(device=str(config.get("device", "auto"))))
    return 0
