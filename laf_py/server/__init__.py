"""The Tornado adapter: laf-py's own HTTP and WebSocket server. (laf_py.asgi serves the same
Tornado application under an ASGI server.)"""

from .runner import Server, serve

__all__ = ["Server", "serve"]
