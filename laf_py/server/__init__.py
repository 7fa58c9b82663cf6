"""The Tornado adapter: the only package of laf-py that imports tornado."""

from .runner import Server, serve

__all__ = ["Server", "serve"]
