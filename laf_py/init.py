"""``laf-py init [DIR]``: a new app that runs at once and passes its own tests."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from .exceptions import LafError

__all__ = ["create_app"]

# Files are stored under names packaging keeps (a leading dot may be dropped).
_RENAMED = {"gitignore": ".gitignore"}


def create_app(target: Path) -> list[Path]:
    """Write the app template into ``target`` (created if needed); return the files written.

    Refuses, writing nothing, when any of those files exists already."""
    template = resources.files("laf_py").joinpath("templates/app")
    files = dict(_walk(template, Path()))
    existing = sorted(str(target / relative) for relative in files if (target / relative).exists())
    if existing:
        raise LafError(f"not overwriting existing files: {', '.join(existing)}")
    for relative, source in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source.read_bytes())
    return [target / relative for relative in files]


def _walk(folder: Traversable, prefix: Path) -> list[tuple[Path, Traversable]]:
    found: list[tuple[Path, Traversable]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name in ("__pycache__",):
            continue
        if entry.is_dir():
            found += _walk(entry, prefix / entry.name)
        else:
            found.append((prefix / _RENAMED.get(entry.name, entry.name), entry))
    return found
