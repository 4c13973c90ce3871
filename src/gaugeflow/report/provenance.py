"""Provenance stamp beside the paper: code version, config, package versions, device, hashes."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

__all__ = ["git_describe", "package_versions", "device_info", "file_sha256", "collect"]

PACKAGES = (
    "gaugeflow",
    "torch",
    "numpy",
    "scipy",
    "pandas",
    "matplotlib",
    "pyerrors",
    "snakemake",
    "snakemake-executor-plugin-slurm",
)


def git_describe(source_dir: str | os.PathLike) -> str:
    """`git describe --always --dirty --tags` of the workflow source, or why there is none."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=source_dir,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown (git not runnable: {exc.__class__.__name__})"
    if result.returncode != 0:
        return "unknown (not a git checkout)"
    return result.stdout.strip()


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(requested: str) -> dict:
    """The device the config asked for and what this machine offers."""
    import torch

    info: dict = {
        "requested": requested,
        "cuda_available": bool(torch.cuda.is_available()),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
        info["cuda_version"] = torch.version.cuda
    return info


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect(
    config: dict,
    source_dir: str | os.PathLike,
    device: str,
    inputs: Sequence[str | os.PathLike] = (),
    command: Sequence[str] | None = None,
) -> dict:
    """Everything needed to tell later how these results were made."""
    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_describe": git_describe(source_dir),
        "source_dir": str(Path(source_dir).resolve()),
        "command": list(command) if command is not None else sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device_info(device),
        "config": config,
        "inputs_sha256": {str(p): file_sha256(p) for p in inputs},
    }
