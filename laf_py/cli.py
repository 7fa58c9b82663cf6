"""The command line: ``laf-py serve``, ``laf-py logs`` and ``laf-py init``. Bad settings end in
one clear line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import OPTIONS, Settings
from .exceptions import ConfigError, LafError
from .logs.command import add_arguments as add_log_arguments
from .logs.command import run as show_logs
from .logs.formats import configure_logging

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="laf-py", description="Laf-style cloud functions.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the functions folder over HTTP and WebSocket")
    for option in OPTIONS:
        serve.add_argument(option.flag, dest=option.field, metavar=option.env, help=option.help)
    logs = commands.add_parser(
        "logs",
        help="show what functions printed and logged (--follow for new lines)",
        allow_abbrev=False,  # --function is not --functions
    )
    add_log_arguments(logs)
    for option in OPTIONS:  # to find the database as serve does
        logs.add_argument(
            option.flag, dest=option.field, metavar=option.env, help=argparse.SUPPRESS
        )
    init = commands.add_parser("init", help="create a new app that runs and passes its tests")
    init.add_argument("dir", nargs="?", default=".", help="the app folder (default: here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "init":
        return _init(Path(args.dir))
    try:
        settings = Settings.load(
            _settings_flags(args), os.environ, check_folders=args.command != "logs"
        )
    except ConfigError as exc:
        print(f"laf-py: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "logs":
        return show_logs(args, settings)
    configure_logging(settings.log_level, settings.log_format)

    from .server import serve  # tornado is imported only when serving

    try:
        serve(settings)
    except LafError as exc:
        print(f"laf-py: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _settings_flags(args: argparse.Namespace) -> dict[str, object]:
    given = vars(args)
    return {option.field: given.get(option.field) for option in OPTIONS}


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
