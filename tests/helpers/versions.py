"""Helpers of the live-model tests: versions of the tiny networks written into a folder."""

from __future__ import annotations

import os
from pathlib import Path

import nnlib
from tests.helpers import tiny_mlp


def save_version(path: Path, version: str, name: str = "mlp", seed: int | None = None) -> Path:
    """Write version ``version`` of the tiny MLP ``name`` to ``path`` (atomically).

    Each version gets other weights (``seed``, by default from the version), so answers
    tell the versions apart beyond their ``version`` field.
    """
    net, metadata = tiny_mlp(name, seed=seed if seed is not None else sum(map(ord, version)))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    nnlib.save(temporary, net, {**metadata, "version": version})
    os.replace(temporary, path)
    return path


def write_routing(folder: Path, text: str) -> Path:
    """Replace ``routing.toml`` of ``folder`` atomically."""
    temporary = folder / ".routing.toml.tmp"
    temporary.write_text(text)
    os.replace(temporary, folder / "routing.toml")
    return folder / "routing.toml"
