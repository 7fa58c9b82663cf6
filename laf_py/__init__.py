"""laf-py: a Laf-style cloud-function host for Python.

from laf_py import cloud, HTTPError, Response, FunctionContext, EventStream, Event
"""

from .cloud import Cloud, Delivery, Socket, cloud
from .config import Settings
from .core.context import FunctionContext
from .core.response import Response
from .core.stream import Event, EventStream
from .exceptions import ConfigError, FunctionLoadError, FunctionTimeoutError, HTTPError, LafError

__version__ = "0.1.0"

__all__ = [
    "Cloud",
    "ConfigError",
    "Delivery",
    "Event",
    "EventStream",
    "FunctionContext",
    "FunctionLoadError",
    "FunctionTimeoutError",
    "HTTPError",
    "LafError",
    "Response",
    "Settings",
    "Socket",
    "__version__",
    "cloud",
]
