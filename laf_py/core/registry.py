"""The function files of one folder: which names exist, and their loaded entry points.

Names come only from scanning the folder, so a request can reach nothing but a file that is
really inside it: ``..``, absolute paths and symlinks that lead out are simply not names.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import FunctionLoadError
from .loader import ModuleLoader

__all__ = ["Function", "FunctionRegistry", "is_public_name"]

log = logging.getLogger("laf_py")

WEBSOCKET = "__websocket__"
INTERCEPTOR = "__interceptor__"
INIT_FILE = "__init__"
PRESENCE = "__presence__"
RESERVED = frozenset({WEBSOCKET, INTERCEPTOR, INIT_FILE, PRESENCE})

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def is_public_name(name: str) -> bool:
    """Reachable over HTTP: no path segment starts with an underscore."""
    return not any(segment.startswith("_") for segment in name.split("/"))


@dataclass(frozen=True, slots=True)
class Function:
    """One loaded function file, or the reason it failed to load."""

    name: str
    path: Path
    main: Callable[..., Any] | None = None
    is_async: bool = False
    methods: frozenset[str] | None = None
    timeout: float | None = None
    error: FunctionLoadError | None = None


class FunctionRegistry:
    """Scans a functions folder, loads its files and reloads them on change."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._loader = ModuleLoader(self.root)
        self._paths: dict[str, Path] = {}
        self._functions: dict[str, Function] = {}

    def get(self, name: str) -> Function | None:
        """The function called ``name``, loading it if needed; None when there is no such file."""
        function = self._functions.get(name)
        if function is None and name in self._paths:
            function = self._functions[name] = self._load(name, self._paths[name])
        return function

    def public(self, name: str) -> Function | None:
        """Like :meth:`get`, but only for names that HTTP may reach."""
        return self.get(name) if is_public_name(name) else None

    def install(self) -> None:
        """Claim the ``laf_functions`` package for this folder (LafError if taken)."""
        self._loader.install()

    def load_all(self) -> list[Function]:
        """Scan the folder and import every file, so broken ones are reported now."""
        self._loader.install()
        self._paths = dict(self._scan())
        self._functions.clear()
        return [f for name in sorted(self._paths) if (f := self.get(name)) is not None]

    def reload(self) -> list[Function]:
        """Drop every loaded module (helpers included) and load the folder again."""
        self._loader.purge()
        return self.load_all()

    def close(self) -> None:
        self._paths.clear()
        self._functions.clear()
        self._loader.close()

    def _scan(self) -> Iterator[tuple[str, Path]]:
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if _SEGMENT.fullmatch(d) and d != "__pycache__"]
            for file in files:
                stem, dot, suffix = file.rpartition(".")
                if not dot or suffix != "py" or not _SEGMENT.fullmatch(stem):
                    continue
                path = Path(folder, file)
                name = path.relative_to(self.root).with_suffix("").as_posix()
                if not is_public_name(name) and name not in RESERVED:
                    continue  # a helper module (_db.py, _lib/...), imported by functions
                if path.is_symlink() and not path.resolve().is_relative_to(self.root):
                    log.warning("ignoring %s: it links outside the functions folder", path)
                    continue
                yield name, path

    def _load(self, name: str, path: Path) -> Function:
        try:
            module = self._loader.load(name, path)
            return _inspect(name, path, self._loader.display(str(path)), module)
        except FunctionLoadError as exc:
            log.error("cannot load function %r: %s", name, exc)
            return Function(name, path, error=exc)


def _inspect(name: str, path: Path, shown_path: str, module: Any) -> Function:
    def fail(reason: str) -> FunctionLoadError:
        return FunctionLoadError(shown_path, None, reason)

    main = getattr(module, "main", None)
    if not callable(main):
        raise fail("defines no main(ctx) function")
    is_async = inspect.iscoroutinefunction(main) or inspect.iscoroutinefunction(
        getattr(main, "__call__", None)  # noqa: B004 - an object with an async __call__
    )

    methods = getattr(module, "methods", None)
    if methods is not None:
        if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
            raise fail(f"methods must be a list of strings like ['GET', 'POST'], got {methods!r}")
        methods = frozenset(m.upper() for m in methods)

    timeout = getattr(module, "timeout", None)
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise fail(f"timeout must be a number of seconds > 0, got {timeout!r}")

    return Function(name, path, main, is_async, methods, timeout)
