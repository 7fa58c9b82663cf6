"""``laf-py serve``: the command line. Bad settings end in one clear line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .config import OPTIONS, Settings
from .exceptions import ConfigError, LafError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="laf-py", description="Laf-style cloud functions.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the functions folder over HTTP and WebSocket")
    for option in OPTIONS:
        serve.add_argument(option.flag, dest=option.field, metavar=option.env, help=option.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
