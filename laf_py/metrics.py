"""Prometheus metrics of one server (``GET /_/metrics``), with prometheus_client.

The server calls the cheap methods of a :class:`Metrics` as things happen, on the event loop
thread; a scrape renders them in the Prometheus text format. Each server has a registry of its
own (tests run several servers in one process), never prometheus_client's global one.

Two ways to keep the numbers, one output:

- :class:`LocalMetrics` (one process, the usual case): plain ints and lists, turned into metric
  families only when scraped. A prometheus_client ``Counter.inc`` or ``Histogram.observe`` takes
  a lock and several calls each time, which measured as 2 % of the instructions of an HTTP hello
  and of a WebSocket echo; this costs a few dict and list operations.
- :class:`SharedMetrics` (``--workers N``): prometheus_client's metrics in multiprocess mode. The
  parent calls :func:`share_between_workers` before forking, so each worker writes its values
  to files of one fresh folder, and a scrape of any worker adds up every worker's files.

Labels are bounded: ``function`` is the name of a function that exists (a request no function
serves counts as :data:`UNKNOWN`), ``method`` one of :data:`METHODS` or ``OTHER``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .exceptions import FunctionTimeoutError, HTTPError

__all__ = [
    "CONTENT_TYPE",
    "METHODS",
    "UNKNOWN",
    "LocalMetrics",
    "Metrics",
    "SharedMetrics",
    "create_metrics",
    "failure_kind",
    "share_between_workers",
    "stop_sharing",
    "worker_exited",
]

# The classic text format (what generate_latest writes for names like ours, and what
# prometheus_client answers a scraper that asks for nothing else), whatever the library's version.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN = "<unknown>"  # the function label of a request no function serves (404, /fn/)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"  # any other method a client sends (answered 405): one label value
# From a cache hit (under a millisecond) to the default --timeout (60 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = ("laf_http_requests", "HTTP requests to /fn/, by function, method and status")
DURATION = (
    "laf_http_request_duration_seconds",
    "Time from the start of an HTTP request to /fn/ to the end of its answer",
)
CONNECTIONS = ("laf_websocket_connections", "Open (accepted) WebSocket connections")
MESSAGES = (
    "laf_websocket_messages",
    "WebSocket data messages received from clients (in) and sent to them (out)",
)
ERRORS = (
    "laf_function_errors",
    "Function calls that raised (error) or ran past their time limit (timeout)",
)
SLOW_CONSUMERS = (
    "laf_slow_consumer_closes",
    "WebSocket connections dropped because the client stopped reading",
)
ONLINE = ("laf_online_users", "Users with an open WebSocket connection (cluster-wide with Redis)")

_shared_folder: Path | None = None  # set in the parent of --workers, inherited by each worker


def failure_kind(exc: BaseException) -> str | None:
    """What ``laf_function_errors_total`` counts an exception from a function as: "timeout",
    "error", or None for an HTTPError (the function's own answer, not a failure)."""
    if isinstance(exc, FunctionTimeoutError):
        return "timeout"
    if isinstance(exc, HTTPError):
        return None
    return "error"


class Metrics(Collector):
    """What the server calls; :func:`create_metrics` picks the kind for this process."""

    content_type = CONTENT_TYPE  # of what exposition() renders

    def __init__(self) -> None:
        self.online_users = 0  # set by the scrape (it may need Redis): see exposition()
        self.registry = CollectorRegistry(auto_describe=False)  # what a scrape renders

    def http_request(self, function: str | None, method: str, status: int, seconds: float) -> None:
        """An HTTP request to ``/fn/`` was answered; ``function`` is the name of the function
        that served it, None when none did."""
        raise NotImplementedError

    def function_failed(self, function: str, exc: BaseException) -> None:
        """A call of ``function`` raised ``exc``: counted unless it is an HTTPError."""
        raise NotImplementedError

    def websocket_opened(self) -> None:
        raise NotImplementedError

    def websocket_closed(self) -> None:
        raise NotImplementedError

    def message_in(self) -> None:
        raise NotImplementedError

    def message_out(self) -> None:
        raise NotImplementedError

    def slow_consumer_closed(self) -> None:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        """``laf_online_users``, the one number read at scrape time."""
        yield GaugeMetricFamily(*ONLINE, value=self.online_users)

    def exposition(self, online_users: int) -> bytes:
        """The text a scrape answers, with ``laf_online_users`` set to ``online_users``."""
        self.online_users = online_users
        return generate_latest(self.registry)

    def _add_collectors(self) -> None:
        self.registry.register(self)
        # process_*: this process (with --workers, the worker that answers the scrape).
        ProcessCollector(registry=self.registry)


class LocalMetrics(Metrics):
    """One process: plain numbers, made into metric families when scraped."""

    def __init__(self) -> None:
        super().__init__()
        self._requests: dict[tuple[str, str, int], int] = {}
        # function -> a count per bucket (not cumulative; the last one is +Inf), then the sum
        self._durations: dict[str, list[float]] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._connections = 0
        self._in = 0
        self._out = 0
        self._slow_consumers = 0
        self._add_collectors()

    def http_request(self, function: str | None, method: str, status: int, seconds: float) -> None:
        if function is None:
            function = UNKNOWN
        if method not in METHODS:
            method = OTHER_METHOD
        key = (function, method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        cells = self._durations.get(function)
        if cells is None:
            cells = self._durations[function] = [0.0] * (len(BUCKETS) + 2)
        cells[bisect_left(BUCKETS, seconds)] += 1  # the first bucket with seconds <= its le
        cells[-1] += seconds

    def function_failed(self, function: str, exc: BaseException) -> None:
        kind = failure_kind(exc)
        if kind is not None:
            key = (function, kind)
            self._errors[key] = self._errors.get(key, 0) + 1

    def websocket_opened(self) -> None:
        self._connections += 1

    def websocket_closed(self) -> None:
        self._connections -= 1

    def message_in(self) -> None:
        self._in += 1

    def message_out(self) -> None:
        self._out += 1

    def slow_consumer_closed(self) -> None:
        self._slow_consumers += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(*REQUESTS, labels=("function", "method", "status"))
        for (function, method, status), count in self._requests.items():
            requests.add_metric((function, method, str(status)), count)
        yield requests
        durations = HistogramMetricFamily(*DURATION, labels=("function",))
        bounds = [*map(floatToGoString, BUCKETS), "+Inf"]
        for function, cells in self._durations.items():
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip(bounds, cells, strict=False):  # cells end with the sum
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            durations.add_metric((function,), buckets, cells[-1])
        yield durations
        yield GaugeMetricFamily(*CONNECTIONS, value=self._connections)
        messages = CounterMetricFamily(*MESSAGES, labels=("direction",))
        messages.add_metric(("in",), self._in)
        messages.add_metric(("out",), self._out)
        yield messages
        errors = CounterMetricFamily(*ERRORS, labels=("function", "kind"))
        for (function, kind), count in self._errors.items():
            errors.add_metric((function, kind), count)
        yield errors
        yield CounterMetricFamily(*SLOW_CONSUMERS, value=self._slow_consumers)
        yield from super().collect()


class SharedMetrics(Metrics):
    """``--workers N``: prometheus_client's metrics, whose values live in the shared folder.

    Labelled children are kept in dicts keyed by their label values, as bound methods, so a
    request does not call ``.labels()`` (which validates and locks) each time.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        own = CollectorRegistry(auto_describe=False)  # written to files; read by the folder's
        self._requests = Counter(*REQUESTS, ("function", "method", "status"), registry=own)
        self._durations = Histogram(*DURATION, ("function",), buckets=BUCKETS, registry=own)
        # The workers' sum; the gauge of a worker that exits drops out (worker_exited).
        connections = Gauge(*CONNECTIONS, registry=own, multiprocess_mode="livesum")
        messages = Counter(*MESSAGES, ("direction",), registry=own)
        self._errors = Counter(*ERRORS, ("function", "kind"), registry=own)
        slow_consumers = Counter(*SLOW_CONSUMERS, registry=own)
        self._count: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._observe: dict[str, Callable[[float], None]] = {}
        self._error: dict[tuple[str, str], Callable[[], None]] = {}
        self._opened, self._closed = connections.inc, connections.dec
        self._in, self._out = messages.labels("in").inc, messages.labels("out").inc
        self._slow = slow_consumers.inc
        # A scrape reads every worker's files, not this worker's values.
        multiprocess.MultiProcessCollector(self.registry, str(folder))  # type: ignore[no-untyped-call]
        self._add_collectors()

    def http_request(self, function: str | None, method: str, status: int, seconds: float) -> None:
        if function is None:
            function = UNKNOWN
        if method not in METHODS:
            method = OTHER_METHOD
        key = (function, method, status)
        count = self._count.get(key)
        if count is None:
            count = self._count[key] = self._requests.labels(function, method, status).inc
        count()
        observe = self._observe.get(function)
        if observe is None:
            observe = self._observe[function] = self._durations.labels(function).observe
        observe(seconds)

    def function_failed(self, function: str, exc: BaseException) -> None:
        kind = failure_kind(exc)
        if kind is None:
            return
        key = (function, kind)
        count = self._error.get(key)
        if count is None:
            count = self._error[key] = self._errors.labels(function, kind).inc
        count()

    def websocket_opened(self) -> None:
        self._opened()

    def websocket_closed(self) -> None:
        self._closed()

    def message_in(self) -> None:
        self._in()

    def message_out(self) -> None:
        self._out()

    def slow_consumer_closed(self) -> None:
        self._slow()


def create_metrics() -> Metrics:
    """SharedMetrics in a worker of ``--workers N``, LocalMetrics otherwise."""
    if _shared_folder is not None:
        return SharedMetrics(_shared_folder)
    return LocalMetrics()


# -- --workers: one folder of values that every worker writes into ---------------------------


def share_between_workers() -> Path:
    """In the parent, before forking the workers: from now on metrics keep their values in
    files of a fresh, empty folder, which a scrape of any worker adds up.

    prometheus_client picks its value class when it is imported, from ``PROMETHEUS_MULTIPROC_DIR``;
    it may have been imported already, so the class is switched here too (metrics look it up
    when they are made, which is in the workers).
    """
    global _shared_folder
    folder = Path(tempfile.mkdtemp(prefix="laf-py-metrics-"))
    os.environ[ENVIRONMENT] = str(folder)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _shared_folder = folder
    return folder


def worker_exited(pid: int) -> None:
    """A worker has exited: its open-connection gauge no longer counts (its counters do)."""
    if _shared_folder is not None:
        multiprocess.mark_process_dead(pid, str(_shared_folder))  # type: ignore[no-untyped-call]


def stop_sharing() -> None:
    """The last worker has exited: remove the folder."""
    global _shared_folder
    if _shared_folder is not None:
        shutil.rmtree(_shared_folder, ignore_errors=True)
        _shared_folder = None
        os.environ.pop(ENVIRONMENT, None)
