"""Shared pytest fixtures: seeded generators, and torch's thread count restored after each test."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Tests that change torch.set_num_threads must not leak it into the next test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU torch generator with a fixed seed."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy generator with a fixed seed."""
    return np.random.default_rng(1234)


@pytest.fixture
def pdflatex():
    """Compile a LaTeX document in a folder with pdflatex; fails the test on a LaTeX error."""
    import subprocess

    def compile_doc(folder, doc: str) -> None:
        (folder / "doc.tex").write_text(doc)
        result = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout[-2000:]

    return compile_doc
