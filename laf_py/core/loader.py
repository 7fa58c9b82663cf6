"""Import function files as modules of one synthetic package, ``laf_functions``.

Function files can share code the ordinary way (``from laf_functions import _helpers``).
The registry imports them in its import thread, never on the event loop.
Modules are compiled from source on every load: bytecode caches are keyed by mtime and size,
so two edits within one second could otherwise bring back the old code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import traceback
import types
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..exceptions import FunctionLoadError, LafError

__all__ = ["PACKAGE", "ModuleLoader", "module_name"]

PACKAGE = "laf_functions"


def module_name(function_name: str) -> str:
    """``"user/profile"`` → ``"laf_functions.user.profile"``."""
    return f"{PACKAGE}.{function_name.replace('/', '.')}"


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        return compile(self.get_data(path), path, "exec", dont_inherit=True)


class _FunctionsFinder(importlib.abc.MetaPathFinder):
    """Finds ``laf_functions.*`` in the functions folder, with the source-only loader.

    A file wins over a folder of the same name, and becomes a package for that folder, so
    ``user.py`` and ``user/profile.py`` are both functions.
    """

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PACKAGE + ".") or path is None:
            return None
        tail = fullname.rpartition(".")[2]
        for entry in path:
            file = Path(entry, tail + ".py")
            if file.is_file():
                folder = Path(entry, tail)
                return importlib.util.spec_from_file_location(
                    fullname,
                    file,
                    loader=_SourceOnlyLoader(fullname, str(file)),
                    submodule_search_locations=[str(folder)] if folder.is_dir() else None,
                )
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            assert spec.origin is not None
            spec.loader = _SourceOnlyLoader(fullname, spec.origin)
        return spec


class ModuleLoader:
    """Owns the ``laf_functions`` package for one functions folder (one per process)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._finder = _FunctionsFinder()
        self._installed = False

    def install(self) -> None:
        """Make ``laf_functions`` this folder. A process hosts one functions folder at a time."""
        if self._installed:
            return
        current = sys.modules.get(PACKAGE)
        if current is not None and getattr(current, "__laf_loader__", None) is not None:
            raise LafError(
                "another laf-py server is already running in this process; "
                "run one server per process (use --workers for more)"
            )
        self.purge()  # anything a previous server's import thread left behind
        package = types.ModuleType(PACKAGE, "Function files of the running laf-py server.")
        package.__path__ = [str(self.root)]
        package.__laf_loader__ = self  # type: ignore[attr-defined]
        sys.modules[PACKAGE] = package
        sys.meta_path.insert(0, self._finder)
        self._installed = True

    def load(self, function_name: str, path: Path) -> types.ModuleType:
        """Import one function file; raise FunctionLoadError naming the file and line."""
        name = module_name(function_name)
        try:
            return importlib.import_module(name)
        except BaseException as exc:  # a module may even raise SystemExit at import
            sys.modules.pop(name, None)
            raise self._describe(exc, path) from exc

    def loaded(self) -> dict[str, types.ModuleType]:
        """The ``laf_functions.*`` modules imported now, by name."""
        prefix = PACKAGE + "."
        return {
            name: module
            for name, module in list(sys.modules.items())
            if name.startswith(prefix) and module is not None
        }

    def purge(self, names: Iterable[str] | None = None) -> dict[str, types.ModuleType]:
        """Forget the modules ``names`` (all of them when None), so the next import reads
        their files again; return the modules that were loaded."""
        loaded = self.loaded()
        dropped: dict[str, types.ModuleType] = {}
        for name in loaded if names is None else names:
            module = sys.modules.pop(name, None)
            if module is None:
                continue
            dropped[name] = module
            # `from laf_functions.a import b` reads the attribute of the parent before
            # sys.modules.
            parent, _, child = name.rpartition(".")
            owner = sys.modules.get(parent)
            if owner is not None and owner.__dict__.get(child) is module:
                del owner.__dict__[child]
        importlib.invalidate_caches()
        return dropped

    def close(self) -> None:
        if not self._installed:
            return
        self.purge()
        sys.modules.pop(PACKAGE, None)
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        self._installed = False

    def _describe(self, exc: BaseException, path: Path) -> FunctionLoadError:
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SyntaxError) and exc.filename:
            return FunctionLoadError(self.display(exc.filename), exc.lineno, reason)
        # The deepest frame inside the functions folder is where the user has to look.
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if self._inside(frame.filename):
                return FunctionLoadError(self.display(frame.filename), frame.lineno, reason)
        return FunctionLoadError(self.display(str(path)), None, reason)

    def _inside(self, filename: str) -> bool:
        return Path(filename).resolve().is_relative_to(self.root)

    def display(self, filename: str) -> str:
        """A path as the user knows it: relative to the working directory when inside it."""
        path = Path(filename).resolve()
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
