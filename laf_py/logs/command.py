"""``laf-py logs``: read the function logs a server kept, or follow them as they come.

It finds the database the way ``laf-py serve`` does (the same flags and ``LAF_*`` variables,
from the same folder), so beside a running server on a laptop ``laf-py logs --follow`` just
works; with PostgreSQL it shows the lines of every node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

from ..cloud.sql import redacted
from ..config import Settings
from .lines import LogLine, follow_lines, parse_level, parse_since, read_lines

__all__ = ["add_arguments", "run"]

CATCH_UP = 3.0

_COLOURS = {
    "DEBUG": "\x1b[2m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[31;1m",
}
_DIM, _CYAN, _RESET = "\x1b[2m", "\x1b[36m", "\x1b[0m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--function", metavar="NAME", help="one function, or a folder of them")
    parser.add_argument("--request", metavar="ID", help="the lines of one call (X-Request-Id)")
    parser.add_argument("--since", metavar="WHEN", help="10m, 2h, 3d or an ISO time (UTC)")
    parser.add_argument("--level", metavar="LEVEL", help="debug, info, warning or error and up")
    parser.add_argument("--limit", type=int, default=100, help="lines shown first (default 100)")
    parser.add_argument("--follow", "-f", action="store_true", help="then show new lines")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    try:
        filters: dict[str, Any] = {"function": args.function, "request_id": args.request}
        if args.level:
            filters["level"] = parse_level(args.level)
        if args.since:
            filters["since"] = parse_since(args.since)
    except ValueError as exc:
        print(f"laf-py: error: {exc}", file=sys.stderr)
        return 2
    url = settings.database
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        print(
            f"laf-py: no function logs here: {parsed.database} does not exist (run laf-py logs "
            "from the app folder, or give the --database-url the server uses)",
            file=sys.stderr,
        )
        return 1
    show = _printer(out, as_json=args.json, colour=out.isatty() and not args.json)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_show(url, filters, args.limit, args.follow, show))
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig) if exc.orig is not None else str(exc)
        if "laf_logs" in reason:
            reason = "it holds no function logs yet (start laf-py serve once)"
        print(f"laf-py: cannot read the logs in {redacted(url)}: {reason}", file=sys.stderr)
        return 1
    return 0


async def _show(url: str, filters: dict[str, Any], limit: int, follow: bool, show: Any) -> None:
    engine = create_async_engine(url)
    try:
        started = time.time()
        first = await read_lines(engine, **filters, limit=limit)
        for line in first:
            show(line)
        if not follow:
            if not first:
                print("no function log lines match (yet)", file=sys.stderr)
            return
        printed = {line.id for line in first}
        # Lines made just before the first read may reach the table after it (the writer
        # batches once a second): follow from a little before; each line shows once.
        since = max(started - CATCH_UP, filters.pop("since", None) or 0.0)
        async for batch in follow_lines(engine, **filters, since=since):
            for line in batch:
                if line.id not in printed:
                    show(line)
    finally:
        await engine.dispose()


def _printer(out: TextIO, *, as_json: bool, colour: bool) -> Any:
    def show(line: LogLine) -> None:
        if as_json:
            entry = line.to_json()
            entry["time"] = _stamp(line.time, iso=True)
            out.write(orjson.dumps(entry).decode() + "\n")
        else:
            level = f"{line.level_name:<7}"
            who = f"{line.function} {line.request_id}"
            if colour:
                level = f"{_COLOURS.get(line.level_name, '')}{level}{_RESET}"
                who = f"{_CYAN}{line.function}{_RESET} {_DIM}{line.request_id}{_RESET}"
            out.write(f"{_stamp(line.time)} {level} {who}: {line.message}\n")
        out.flush()

    return show


def _stamp(when: float, iso: bool = False) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S" if iso else "%Y-%m-%d %H:%M:%S", time.gmtime(when))
    return f"{seconds}.{int(when % 1 * 1000):03d}" + ("Z" if iso else "")
