"""``GET /_/metrics``: the server's metrics in the Prometheus text format (an admin endpoint)."""

from __future__ import annotations

from .admin import AdminHandler

__all__ = ["METRICS_OFF", "MetricsHandler"]

METRICS_OFF = "metrics are off (--metrics false / LAF_METRICS=false)"


class MetricsHandler(AdminHandler):
    """What Prometheus scrapes; the access rule is AdminHandler's (token, or loopback only)."""

    SUPPORTED_METHODS = ("GET",)

    async def get(self) -> None:
        metrics = self.runtime.metrics
        if metrics is None:
            return self.send_error_json(404, METRICS_OFF)
        # With Redis, the users online on every node: one Redis call per scrape.
        online = len(await self.runtime.sockets.online_users())
        self.set_header("Content-Type", metrics.content_type)
        self.finish(metrics.exposition(online))

    def compute_etag(self) -> None:
        return None  # the numbers change all the time
