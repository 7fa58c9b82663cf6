"""Which function modules import which: the graph hot reload follows.

The imports are read from each file's source with :mod:`ast`, so the answer depends only on
the files, never on what happened to run: every ``import`` statement counts, at module level or
inside a function, in all its forms::

    import laf_functions._db            from laf_functions import _db
    import laf_functions.user.profile   from laf_functions._lib import cache
    from . import _db                   from ._lib.cache import get

Imports made at run time by name (``importlib.import_module("laf_functions._db")``,
``__import__``) are not seen: a file that imports that way is not reloaded when the module it
imports changes (edit the file itself, or import the ordinary way).

A module also depends on its parent packages, because Python runs ``team.py`` (or
``team/__init__.py``) before any ``team/...`` module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator

from .loader import PACKAGE

__all__ = ["ImportGraph", "imported_modules", "parents"]


def parents(module: str) -> Iterator[str]:
    """``laf_functions.a.b.c`` → ``laf_functions.a``, ``laf_functions.a.b`` (not the root)."""
    parts = module.split(".")
    for end in range(2, len(parts)):
        yield ".".join(parts[:end])


def imported_modules(source: str | bytes, module: str, is_package: bool) -> set[str]:
    """The ``laf_functions.*`` modules that ``module``'s source may import, its parent
    packages included. Names that turn out to be attributes rather than modules
    (``from laf_functions._db import connect``) are harmless extras. A file that does not
    parse imports nothing (it fails to load anyway, and is read again once edited)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set(parents(module))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
                found.update(parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is None:
                continue
            found.add(base)
            found.update(parents(base))
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {name for name in found if name.startswith(PACKAGE + ".")}


def _absolute(name: str | None, level: int, package: str) -> str | None:
    """The absolute module of ``from <dots><name> import ...`` inside ``package``."""
    if level == 0:
        return name
    parts = package.split(".")
    if level - 1 >= len(parts):
        return None  # beyond the top: fails at import time anyway
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


class ImportGraph:
    """Module → the modules it imports, and the reverse question: who is affected by a change."""

    def __init__(self) -> None:
        self._imports: dict[str, frozenset[str]] = {}

    def record(self, module: str, imports: Iterable[str]) -> None:
        self._imports[module] = frozenset(imports) - {module}

    def remove(self, module: str) -> None:
        self._imports.pop(module, None)

    def clear(self) -> None:
        self._imports.clear()

    def imports(self, module: str) -> frozenset[str]:
        return self._imports.get(module, frozenset())

    def affected(self, changed: Iterable[str]) -> set[str]:
        """``changed`` and every module that imports one of them, directly or transitively."""
        importers: dict[str, set[str]] = {}
        for module, imports in self._imports.items():
            for name in imports:
                importers.setdefault(name, set()).add(module)
        result = set(changed)
        pending = list(result)
        while pending:
            for importer in importers.get(pending.pop(), ()):
                if importer not in result:
                    result.add(importer)
                    pending.append(importer)
        return result

    def importers_first(self, modules: Iterable[str]) -> list[str]:
        """``modules`` ordered so that a module comes before the modules it imports (ties and
        import cycles in name order): the order in which to clean them up."""
        wanted = set(modules)
        order: list[str] = []
        seen: set[str] = set()

        def visit(module: str) -> None:
            seen.add(module)
            for name in sorted(self.imports(module) & wanted):
                if name not in seen:
                    visit(name)
            order.append(module)  # after everything it imports

        for module in sorted(wanted):
            if module not in seen:
                visit(module)
        return order[::-1]
