"""The start-up banner: where the server listens, what it serves, and where its data lives."""

from __future__ import annotations

from ..cloud.sql import redacted
from ..config import Settings
from ..core.registry import Function, is_public_name

__all__ = ["banner"]

SHOWN_NAMES = 8  # functions named in the banner; the rest are counted


def banner(settings: Settings, url: str, functions: list[Function], loop: str) -> list[str]:
    """The banner's lines, for one log record each."""
    reload = "hot reload on" if settings.reload else "hot reload off"
    lines = [f"laf-py listening on {url} ({loop}, {reload})"]
    public = [f.name for f in functions if is_public_name(f.name) and f.error is None]
    broken = [f for f in functions if f.error is not None]
    shown = ", ".join(public[:SHOWN_NAMES]) + (", ..." if len(public) > SHOWN_NAMES else "")
    lines.append(f"  functions  {url}/fn/<name>: {len(public)} ({shown or 'none yet'})")
    for function in broken:
        lines.append(f"  FAILED     {function.name}: {function.error}")
    if any(f.name == "__websocket__" and f.error is None for f in functions):
        lines.append(f"  websocket  {url.replace('http', 'ws', 1)}/__websocket__")
    access = "with --admin-token" if settings.admin_token else "from this machine only"
    lines.append(f"  console    {url}/_/console ({access})")
    lines.append(f"  app        {settings.app_dir.resolve()}")
    data = f"  data       {settings.data.resolve()}"
    if settings.data_is_legacy:
        data += (
            " (an older laf-py's folder beside the functions folder, still used; move it to "
            f"{(settings.app_dir / '.laf').resolve()})"
        )
    lines.append(data)
    lines.append(f"  database   {redacted(settings.database)}")
    if settings.redis_url and not settings.secret:
        # Only a cluster needs this (--workers needs Redis too): every node must sign tokens
        # with the same secret, and this one was made for this folder.
        lines.append(
            f"  WARNING    tokens are signed with {settings.data.resolve() / 'secret'}; every "
            "node of a cluster needs the same one: set LAF_SECRET (or --secret) on each"
        )
    return lines
