"""Prometheus metrics of one API app: its own registry, so two apps in a process never clash."""

from __future__ import annotations

from time import perf_counter

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS

#: Route label of requests that matched no route (kept to one label value: no cardinality
#: explosion from scanners probing random paths).
UNMATCHED_ROUTE = "<unmatched>"


class ApiMetrics:
    """The API's metrics and the registry that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "asvat_api_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "asvat_api_request_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.messages_consumed = Counter(
            "asvat_api_messages_consumed_total",
            "Kafka messages read and handled (stored, or set aside as invalid), by topic.",
            ["topic"],
            registry=self.registry,
        )
        self.messages_invalid = Counter(
            "asvat_api_messages_invalid_total",
            "Kafka messages set aside because they were not valid JSON, broke their schema "
            "or could not be stored, by topic.",
            ["topic"],
            registry=self.registry,
        )
        for topic in (TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS):
            # Present from the start at 0, so rate() and alerts work before the first message.
            self.messages_consumed.labels(topic=topic)
            self.messages_invalid.labels(topic=topic)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by its route template (``/v1/incidents/{id}/…``)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router records the matched route in the (shared) scope.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.requests.labels(
                route=route, method=scope["method"], status=str(status)
            ).inc()
            self.metrics.request_seconds.labels(route=route).observe(perf_counter() - started)
