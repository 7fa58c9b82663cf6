"""laf-py as an ASGI application.

    # main.py: run with `uvicorn main:app` (or hypercorn, granian)
    from laf_py.asgi import create_app

    app = create_app("functions")

Or inside an existing app::

    laf = create_app("functions")
    api = FastAPI(lifespan=laf.lifespan)
    api.mount("/laf", laf)  # /laf/fn/<name>, /laf/__websocket__

``laf-py serve --server uvicorn`` runs it under uvicorn with every laf-py option.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import OPTIONS, Settings
from .app import LafApp

__all__ = ["LafApp", "app_from_environment", "create_app"]


def create_app(functions_dir: str | Path | None = None, **settings: Any) -> LafApp:
    """An ASGI app serving ``functions_dir`` (default: ``<app_dir>/functions``). ``settings``
    are :class:`~laf_py.config.Settings` fields (``app_dir``, ``database_url``,
    ``allowed_hosts``, ``allowed_origins``, ...): the options of ``laf-py serve``, without
    their dashes. A bad one raises :class:`~laf_py.exceptions.ConfigError` here, saying why."""
    if functions_dir is not None:
        settings["functions_dir"] = functions_dir
    fields = {name: _as_field(name, value) for name, value in settings.items()}
    return LafApp(Settings(**fields).validated())


_OPTIONS = {option.field: option for option in OPTIONS}


def _as_field(name: str, value: Any) -> Any:
    """A keyword as a Settings field holds it: a string is read as ``laf-py serve`` reads
    the option (``"sqlite:///app.db"``, ``"10MiB"``, ``"a.com,b.com"``), a list of a tuple
    setting becomes a tuple."""
    option = _OPTIONS.get(name)
    if option is None:
        return value
    if isinstance(value, str):
        return option.parse_from(name, value)
    if isinstance(value, (list, set, frozenset)):
        return tuple(value)
    return value


def app_from_environment() -> LafApp:
    """An app configured like ``laf-py serve``'s, from ``LAF_*`` variables only: the factory
    for servers that import an app by name, such as
    ``granian --interface asgi --factory laf_py.asgi:app_from_environment``."""
    return LafApp(Settings.load({}, os.environ).validated())
