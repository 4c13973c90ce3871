"""The `gaugeflow` command line: one sub-command per verb, discovered from gaugeflow.commands.

Each module in `gaugeflow/commands/` defines `register(subparsers)`, which adds its verbs and
sets `func` on each parser to a callable taking the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from .allocator import tune_allocator
from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    parser = argparse.ArgumentParser(
        prog="gaugeflow",
        description="Normalizing flows for the 2D Schwinger model (arXiv:2308.13294 rebuilt).",
    )
    parser.add_argument("--version", action="version", version=f"gaugeflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    tune_allocator()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"gaugeflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gaugeflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
