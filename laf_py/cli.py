"""The command line: ``laf-py serve`` and ``laf-py init``. Bad settings end in one clear line
and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import OPTIONS, Settings
from .exceptions import ConfigError, LafError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="laf-py", description="Laf-style cloud functions.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the functions folder over HTTP and WebSocket")
    for option in OPTIONS:
        serve.add_argument(option.flag, dest=option.field, metavar=option.env, help=option.help)
    init = commands.add_parser("init", help="create a new app that runs and passes its tests")
    init.add_argument("dir", nargs="?", default=".", help="the app folder (default: here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "init":
        return _init(Path(args.dir))
    try:
        settings = Settings.load(vars(args), os.environ)
    except ConfigError as exc:
        print(f"laf-py: error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)

    from .server import serve  # tornado is imported only when serving

    try:
        serve(settings)
    except LafError as exc:
        print(f"laf-py: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _init(target: Path) -> int:
    from .init import create_app

    try:
        written = create_app(target)
    except (LafError, OSError) as exc:
        print(f"laf-py: error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"  created {path}")
    go = "" if target.resolve() == Path.cwd() else f"cd {target} && "
    print(f"\nA new laf-py app. Next: {go}laf-py serve    (and pytest, to run its tests)")
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # watchfiles logs every batch of changes at info; laf-py says what it reloaded instead.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, logging.getLogger().level))
