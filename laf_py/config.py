"""Settings as one frozen value object, read from command-line flags and ``LAF_*`` variables.

Precedence: a flag given on the command line, then the environment variable, then the default.
Every bad value becomes a :class:`ConfigError` whose message is one line saying what is wrong
and what to set.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .options import LOG_LEVELS, MIB, MIN_SECRET_LENGTH, OPTIONS

__all__ = ["LOG_LEVELS", "MIB", "MIN_SECRET_LENGTH", "OPTIONS", "Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a server needs to start. Build it directly or with :meth:`Settings.load`."""

    # The app folder holds functions/, .laf/ (data) and tests/; each part can be moved apart.
    # Given as None, functions_dir and data_dir are filled in from app_dir on construction.
    app_dir: Path = Path(".")
    functions_dir: Path | None = None
    data_dir: Path | None = None
    # The app's website, served at /: <app>/public when that folder exists, else none.
    public_dir: Path | None = None
    spa_fallback: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    reload: bool = True
    timeout: float = 60.0
    shutdown_grace: float = 10.0
    websocket_error_frames: bool = True
    log_level: str = "info"
    log_format: str = "text"
    log_retention: float = 3 * 86400.0  # seconds; 0 keeps no function logs
    metrics: bool = True
    admin_token: str | None = field(default=None, repr=False)
    # Kept out of repr(): they may hold passwords.
    database_url: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    workers: int = 1
    cluster: str = "laf"
    heartbeat: float = 2.0
    max_body_size: int = 10 * MIB
    max_message_size: int = 1 * MIB
    max_send_buffer: int = 1 * MIB
    max_connections: int = 10_000
    max_messages_per_second: float = 100.0
    # Slow clients: HTTP timeouts and connection cap, WebSocket message timeout.
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    message_timeout: float = 60.0
    max_header_size: int = 64 * 1024
    max_http_connections: int = 1000
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    allowed_origins: tuple[str, ...] = ()
    allow_credentials: bool = False
    trust_proxy_headers: bool = False
    # Host names and tokens: None = the default for --host (loopback names, or any).
    allowed_hosts: tuple[str, ...] | None = None
    require_token_exp: bool = False
    event_loop: str = "auto"
    server: str = "tornado"  # or "uvicorn": laf_py.asgi under uvicorn

    def __post_init__(self) -> None:
        functions = self.functions_dir or self.app_dir / "functions"
        object.__setattr__(self, "functions_dir", functions)
        if self.data_dir is None:
            object.__setattr__(self, "data_dir", find_data_dir(self.app_dir, functions))
        if self.public_dir is None and (self.app_dir / PUBLIC_FOLDER).is_dir():
            object.__setattr__(self, "public_dir", self.app_dir / PUBLIC_FOLDER)

    @property
    def functions(self) -> Path:
        """The functions folder."""
        assert self.functions_dir is not None  # filled in by __post_init__
        return self.functions_dir

    @property
    def data(self) -> Path:
        """Where laf-py keeps its own files (SQLite database, token secret)."""
        assert self.data_dir is not None  # filled in by __post_init__
        return self.data_dir

    @property
    def data_is_legacy(self) -> bool:
        """True when the data folder is an older laf-py's, beside the functions folder."""
        return self.data.resolve() != (self.app_dir / DATA_FOLDER).resolve() and (
            self.data.resolve() == legacy_data_dir(self.functions)
        )

    @property
    def database(self) -> str:
        """The SQLAlchemy URL in use: the configured one, or SQLite in the data folder."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data.resolve() / 'laf.db'}"

    @property
    def max_send_backlog(self) -> int:
        """Unsent data one socket may ever hold (16 x max_send_buffer): past it, 1008 at once."""
        return SEND_BACKLOG_FACTOR * self.max_send_buffer

    @property
    def max_outbound_message(self) -> int:
        """The largest message a function may send (8 x max_send_buffer): half the backlog
        cap, so a reading client always has room for one more of them."""
        return OUTBOUND_MESSAGE_FACTOR * self.max_send_buffer

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        check_folders: bool = True,
    ) -> Settings:
        """Build settings from flags (by field name; None means "not given") and the environment.

        ``check_folders=False`` for commands that only need the database (``laf-py logs``)."""
        flags = flags or {}
        environ = environ if environ is not None else {}
        values: dict[str, Any] = {}
        for option in OPTIONS:
            given = flags.get(option.field)
            if given is not None:
                source, raw = option.flag, given
            elif option.env in environ:
                source, raw = option.env, environ[option.env]
            else:
                continue
            values[option.field] = option.parse_from(source, raw)
        settings = cls(**values)
        return settings.validated() if check_folders else settings

    def validated(self) -> Settings:
        """Return self if every value makes sense together, else raise ConfigError."""
        if not self.app_dir.is_dir():
            what = "is not a folder" if self.app_dir.exists() else "does not exist"
            raise ConfigError(
                f"app folder {str(self.app_dir)!r} {what}; "
                "create it (laf-py init) or point --app-dir / LAF_APP_DIR at one"
            )
        if self.public_dir is not None and not self.public_dir.is_dir():
            what = "is not a folder" if self.public_dir.exists() else "does not exist"
            raise ConfigError(
                f"public folder {str(self.public_dir)!r} {what}; create it, or point --public "
                "/ LAF_PUBLIC at one (without either, <app folder>/public is served if it exists)"
            )
        if not self.functions.is_dir():
            what = "is not a folder" if self.functions.exists() else "does not exist"
            raise ConfigError(
                f"functions folder {str(self.functions)!r} {what}; create it (laf-py init "
                "makes a new app), or point --functions / LAF_FUNCTIONS at one"
            )
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                f"--workers {self.workers} needs Redis to join the workers: "
                "set --redis-url / LAF_REDIS_URL (or use one worker)"
            )
        if self.ping_timeout > self.ping_interval:
            raise ConfigError(
                f"--ping-timeout ({self.ping_timeout:g}) cannot be longer than --ping-interval "
                f"({self.ping_interval:g}); set LAF_PING_TIMEOUT or LAF_PING_INTERVAL"
            )
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ConfigError(
                "--event-loop uvloop: uvloop is not installed; pip install uvloop, or set "
                "LAF_EVENT_LOOP=auto"
            )
        if self.server == "uvicorn" and importlib.util.find_spec("uvicorn") is None:
            raise ConfigError(
                "--server uvicorn: uvicorn is not installed; pip install 'laf-py[uvicorn]', "
                "or set LAF_SERVER=tornado"
            )
        if self.secret is not None and len(self.secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"the secret is too short: use at least {MIN_SECRET_LENGTH} characters "
                "(set LAF_SECRET or --secret)"
            )
        return self


DATA_FOLDER = ".laf"
PUBLIC_FOLDER = "public"
# Outbound WebSocket data, in multiples of --max-send-buffer (see SocketConnection._write).
SEND_BACKLOG_FACTOR = 16  # unsent data per socket, at most
OUTBOUND_MESSAGE_FACTOR = 8  # one message a function sends, at most


def legacy_data_dir(functions: Path) -> Path:
    """Where laf-py before 0.2 kept its data: beside the functions folder."""
    return functions.resolve().parent / DATA_FOLDER


def find_data_dir(app_dir: Path, functions: Path) -> Path:
    """``<app>/.laf``; or, when only an older laf-py's folder beside ``functions/`` exists,
    that one, so an app set up before the app folder existed keeps its database and secret."""
    current = app_dir / DATA_FOLDER
    legacy = legacy_data_dir(functions)
    if not current.exists() and legacy.is_dir() and legacy != current.resolve():
        return legacy
    return current
