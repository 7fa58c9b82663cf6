"""The function files of one folder: which names exist, and their loaded entry points.

Names come only from scanning the folder, so a request can reach nothing but a file that is
really inside it: ``..``, absolute paths and symlinks that lead out are simply not names.

Loading never happens on the event loop. :meth:`FunctionRegistry.load` (start-up) and
:meth:`FunctionRegistry.refresh` (hot reload) import files in a worker thread, one load at a
time, so a module that takes seconds to import stalls no other call; then the new
:class:`Function` objects replace the old ones in one assignment on the loop.
:meth:`~FunctionRegistry.get` only reads.

A refresh imports again only the files that changed and the files that import them, directly
or through other modules (:mod:`.imports` reads the import statements). ``__init__.py`` is
loaded at start-up only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, TypeVar

from ..exceptions import FunctionLoadError
from ..logs.capture import flush_output
from .context import IMPORT_METHOD, FunctionContext, in_call
from .daemon import in_daemon_thread
from .imports import ImportGraph, imported_modules, parents
from .loader import ModuleLoader, module_name
from .queue_settings import DEFAULT_QUEUE_SETTINGS, QueueSettings, parse_queue_settings
from .schedule import SETTING as SCHEDULE_SETTING
from .schedule import Schedule, parse_schedule, setting_line

__all__ = ["Function", "FunctionRegistry", "Reloaded", "is_public_name"]

log = logging.getLogger("laf_py")

WEBSOCKET = "__websocket__"
INTERCEPTOR = "__interceptor__"
INIT_FILE = "__init__"
PRESENCE = "__presence__"
DEFAULT = "__default__"  # runs for /fn/<name> when no file serves that name (Laf's fallback)
RESERVED = frozenset({WEBSOCKET, INTERCEPTOR, INIT_FILE, PRESENCE, DEFAULT})

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_INIT_MODULE = module_name(INIT_FILE)

T = TypeVar("T")


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
    # `main` is a generator function (async or not): calling it runs none of its code, so
    # the call is made on the loop and the stream is driven by server/streaming.py.
    is_generator: bool = False
    methods: frozenset[str] | None = None
    timeout: float | None = None
    error: FunctionLoadError | None = None
    queue: QueueSettings = DEFAULT_QUEUE_SETTINGS  # for its queued jobs (laf_py.jobs)
    schedule: Schedule | None = None  # runs on its own at these times (laf_py.scheduler)


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What one :meth:`FunctionRegistry.refresh` did."""

    changed: tuple[str, ...]  # the files that changed, as the user knows them
    loaded: tuple[Function, ...]  # functions imported again or for the first time
    removed: tuple[str, ...]  # functions whose file is gone
    unloaded: tuple[ModuleType, ...]  # the old modules replaced or removed, importers first
    init_changed: bool  # functions/__init__.py changed (it is not loaded again)


class _File(NamedTuple):
    path: Path
    stamp: tuple[int, int, int]  # mtime_ns, size, inode
    is_package: bool  # x.py beside a folder x/, or x/__init__.py


class _Plan(NamedTuple):
    functions: dict[str, Function]
    result: Reloaded


class FunctionRegistry:
    """Scans a functions folder, loads its files and reloads what changed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._loader = ModuleLoader(self.root)
        self._functions: dict[str, Function] = {}
        # Owned by whoever runs _prepare (the import thread; one at a time under _lock).
        self._files: dict[str, _File] = {}  # module name → file, helpers included
        self._graph = ImportGraph()
        self._warned: set[Path] = set()
        self._lock = asyncio.Lock()
        # Function logs: where what a module prints while it is imported is kept.
        self.log_sink: Any = None

    def get(self, name: str) -> Function | None:
        """The function called ``name``; None when there is no such file. Never imports."""
        return self._functions.get(name)

    def public(self, name: str) -> Function | None:
        """Like :meth:`get`, but only for names that HTTP may reach."""
        return self.get(name) if is_public_name(name) else None

    def functions(self) -> list[Function]:
        """Every function file (reserved ones included), loaded or failed, by name."""
        return sorted(self._functions.values(), key=lambda f: f.name)

    def install(self) -> None:
        """Claim the ``laf_functions`` package for this folder (LafError if taken)."""
        self._loader.install()

    async def load(self) -> list[Function]:
        """Scan the folder and import every file in the import thread, so broken ones are
        reported now; then make them the functions served."""
        self.install()
        async with self._lock:
            plan = await self._in_thread(self._prepare, None)
            self._functions = plan.functions
        return sorted(plan.functions.values(), key=lambda f: f.name)

    def load_all(self) -> list[Function]:
        """:meth:`load` in the calling thread, for tools and tests without an event loop."""
        self.install()
        plan = self._prepare(None)
        self._functions = plan.functions
        return sorted(plan.functions.values(), key=lambda f: f.name)

    async def refresh(self, reported: set[Path]) -> Reloaded:
        """Bring the functions up to date with the folder after files changed.

        ``reported`` are the paths a watcher saw change (they count as changed even when
        their size and mtime look the same); the folder is scanned as well. The changed files
        and everything that imports them are imported again in the import thread; the new
        functions then replace the old ones at once, so a call in flight finishes with the
        code it started with. The old modules are in the result, for their ``on_unload()``.
        """
        async with self._lock:
            try:
                plan = await self._in_thread(self._prepare, reported)
            except Exception:
                self._files = {}  # the next refresh sees every file as changed
                raise
            self._functions = plan.functions
        if plan.result.init_changed:
            log.warning(
                "%s changed: it runs only at start-up, so the change takes effect at the next "
                "start",
                self._loader.display(str(self.root / "__init__.py")),
            )
        return plan.result

    def loaded_modules(self) -> list[ModuleType]:
        """Every function and helper module imported now, importers first."""
        loaded = self._loader.loaded()
        return [loaded[name] for name in self._graph.importers_first(loaded)]

    def display(self, module: ModuleType) -> str:
        """A module's file as the user knows it."""
        return self._loader.display(getattr(module, "__file__", None) or module.__name__)

    def close(self) -> None:
        self._functions = {}
        self._files = {}
        self._graph.clear()
        self._loader.close()

    async def _in_thread(self, work: Callable[..., T], *args: Any) -> T:
        # A daemon thread per load: a module that never finishes importing must not hold
        # the exit. One load at a time: callers hold _lock.
        return await in_daemon_thread(work, *args, name="laf-import")

    def _prepare(self, reported: set[Path] | None) -> _Plan:
        """Scan, import what changed (everything when ``reported`` is None) and return the
        functions to serve next. Runs in the import thread; touches no served state."""
        everything = reported is None
        files, names = self._scan()
        old = self._files
        if reported is None:
            edited = changed = set(files) | set(old)
            self._graph.clear()
        else:
            edited = {
                module
                for module in files.keys() | old.keys()
                if files.get(module) != old.get(module)
            }
            for path in reported:
                module = self._module_of(path)
                if module is not None and (module in files or module in old):
                    edited.add(module)
            changed = set(edited)
            # A file that comes or goes can turn its parent module into a package or back.
            for module in files.keys() ^ old.keys():
                changed.update(parents(module))
        for module in changed:
            file = files.get(module)
            if file is None:
                self._graph.remove(module)
            else:
                self._graph.record(
                    module, imported_modules(_read(file.path), module, file.is_package)
                )
        self._files = files

        affected = self._graph.affected(changed)
        if not everything:
            affected.discard(_INIT_MODULE)  # __init__.py is loaded at start-up only
        dropped = self._loader.purge(None if everything else affected)

        functions = {} if everything else dict(self._functions)
        removed = [n for n in functions if n not in names and n != INIT_FILE]
        for name in removed:
            del functions[name]
        to_load = [
            name
            for name in sorted(names)
            if everything
            or (name != INIT_FILE and (module_name(name) in affected or name not in functions))
        ]
        loaded = [self._load(name, names[name]) for name in to_load]
        functions.update((f.name, f) for f in loaded)
        order = self._graph.importers_first(dropped)
        return _Plan(
            functions,
            Reloaded(
                changed=tuple(
                    sorted(self._loader.display(str(p)) for p in _paths(edited, old, files))
                ),
                loaded=tuple(loaded),
                removed=tuple(sorted(removed)),
                unloaded=tuple(dropped[name] for name in order),
                init_changed=not everything and _INIT_MODULE in edited,
            ),
        )

    def _scan(self) -> tuple[dict[str, _File], dict[str, Path]]:
        """Every Python file (module name → file) and the function files among them."""
        files: dict[str, _File] = {}
        names: dict[str, Path] = {}
        warned: set[Path] = set()
        for folder, dirs, entries in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if _SEGMENT.fullmatch(d) and d != "__pycache__")
            base = Path(folder)
            for entry in sorted(entries):
                stem, dot, suffix = entry.rpartition(".")
                if not dot or suffix != "py" or not _SEGMENT.fullmatch(stem):
                    continue
                path = base / entry
                try:
                    stat = path.stat()
                except OSError:  # gone meanwhile, or a dangling symlink
                    continue
                name = path.relative_to(self.root).with_suffix("").as_posix()
                module = self._module_of(path)
                if module is None or module in files:
                    continue  # x/__init__.py when x.py exists: the file wins
                is_package = (stem == "__init__" and base != self.root) or (base / stem).is_dir()
                files[module] = _File(
                    path, (stat.st_mtime_ns, stat.st_size, stat.st_ino), is_package
                )
                if not is_public_name(name) and name not in RESERVED:
                    continue  # a helper module (_db.py, _lib/...), imported by functions
                if path.is_symlink() and not path.resolve().is_relative_to(self.root):
                    if path not in self._warned:
                        log.warning("ignoring %s: it links outside the functions folder", path)
                    warned.add(path)
                    continue
                names[name] = path
        self._warned = warned
        return files, names

    def _module_of(self, path: Path) -> str | None:
        """The module a ``.py`` file of the folder is imported as; None for anything else."""
        if path.suffix != ".py" or not path.is_relative_to(self.root):
            return None
        relative = path.relative_to(self.root).with_suffix("")
        if relative.name == "__init__" and relative.parent != Path("."):
            relative = relative.parent  # team/__init__.py is the package laf_functions.team
        return module_name(relative.as_posix())

    def _load(self, name: str, path: Path) -> Function:
        # What the module prints or logs at import is a line of that function's.
        importing = FunctionContext(IMPORT_METHOD, name)
        importing.log_sink = self.log_sink
        with in_call(importing):
            try:
                module = self._loader.load(name, path)
                if importing._output:
                    flush_output(importing)  # a last line printed without its newline
                return _inspect(name, path, self._loader.display(str(path)), module)
            except FunctionLoadError as exc:
                log.error("cannot load function %r: %s", name, exc)
                return Function(name, path, error=exc)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _paths(modules: set[str], *trees: dict[str, _File]) -> set[Path]:
    return {tree[m].path for m in modules for tree in trees if m in tree}


def _inspect(name: str, path: Path, shown_path: str, module: Any) -> Function:
    def fail(reason: str) -> FunctionLoadError:
        return FunctionLoadError(shown_path, None, reason)

    main = getattr(module, "main", None)
    if not callable(main):
        raise fail("defines no main(ctx) function")
    is_async = inspect.iscoroutinefunction(main) or inspect.iscoroutinefunction(
        getattr(main, "__call__", None)  # noqa: B004 - an object with an async __call__
    )
    is_generator = inspect.isasyncgenfunction(main) or inspect.isgeneratorfunction(main)

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

    try:
        queue = parse_queue_settings(module)
    except ValueError as exc:
        raise fail(str(exc)) from None

    schedule = None
    value = getattr(module, SCHEDULE_SETTING, None)
    if value is not None and name not in RESERVED:
        try:
            schedule = parse_schedule(value, time.time())
        except ValueError as exc:
            raise FunctionLoadError(shown_path, setting_line(path), str(exc)) from None

    return Function(
        name, path, main, is_async, is_generator, methods, timeout, schedule=schedule, queue=queue
    )
