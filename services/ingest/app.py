"""The ingest HTTP service: validate, pseudonymise, publish, and only then say "accepted".

``POST /v1/incidents`` takes one event or many (a JSON object, a JSON array, or NDJSON).
A request is all or nothing: one invalid record and nothing is published (422, every
problem listed); a broker that does not acknowledge every record gives 503 and the client
re-sends the whole request (duplicates by ``event_id`` are ignored downstream). Raw caller
data never reaches a log line or a topic: only ``victim_key`` leaves this service.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from asvat.auth import AuthUnavailable, Principal, allows, lookup, lookup_engine
from asvat.contracts import loads_json, refuse_json_constant
from asvat.domain.policy import Policy
from asvat.domain.timeutil import format_timestamp, now_micros
from asvat.keys import load_key_ring
from asvat.logs import ids_of
from asvat.runtime import GC_PAUSES
from asvat.settings import Settings
from services.ingest.area_check import CHECKS, AreaCheck
from services.ingest.publisher import BrokerUnavailable, Publisher
from services.ingest.submission import REASONS, Accepted, Submission

log = logging.getLogger("asvat.ingest")

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_ERRORS_SHOWN = 1000
RETRY_AFTER_SECONDS = 5
READY_TIMEOUT_SECONDS = 2.0
JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})
BODY = "(body)"
TOO_LARGE = f"the body is larger than {MAX_BODY_BYTES} bytes; send smaller batches"


class IngestMetrics:
    """The service's Prometheus metrics, in a registry of its own (one per app).

    ``received`` counts records parsed from request bodies (a body that cannot be parsed
    counts as one record), so that received = accepted + the sum of rejected.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(GC_PAUSES)
        self.received = Counter(
            "asvat_ingest_records_received",
            "Incident records received (an unparseable body counts as one).",
            registry=self.registry,
        )
        self.accepted = Counter(
            "asvat_ingest_records_accepted",
            "Incident records acknowledged by the broker and answered 202.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "asvat_ingest_records_rejected",
            "Incident records not accepted, by reason: invalid_record (the whole request was "
            "refused because a record in it was invalid), malformed_body, body_too_large, "
            "unsupported_media_type, broker_unavailable.",
            ["reason"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "asvat_ingest_publish_seconds",
            "Time to publish one request's records and receive every acknowledgement.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "asvat_ingest_dead_letters",
            "Records the Kafka source (asvat.raw.v1) set aside on asvat.incidents.dlq.v1 "
            "instead of publishing, by source and reason code (HTTP refuses to the client "
            "instead; asvat ingest-file and asvat dlq replay report their own counts).",
            ["source", "reason"],
            registry=self.registry,
        )
        self.location_warnings = Counter(
            "asvat_ingest_location_warnings",
            "Records published with a place outside the UK or outside the force area "
            "(flagged, not dropped), by source and check.",
            ["source", "check"],
            registry=self.registry,
        )
        self.raw_records = Counter(
            "asvat_ingest_raw_records",
            "Records read from asvat.raw.v1 and acknowledged downstream, by outcome "
            "(published, dead_letter).",
            ["outcome"],
            registry=self.registry,
        )
        for reason in REASONS:
            self.dead_letters.labels(source="kafka", reason=reason)
        for check in CHECKS:
            for source in ("http", "kafka", "bus-feedback"):
                self.location_warnings.labels(source=source, check=check)
        for outcome in ("published", "dead_letter"):
            self.raw_records.labels(outcome=outcome)
        for reason in (
            "invalid_record",
            "malformed_body",
            "body_too_large",
            "unsupported_media_type",
            "broker_unavailable",
        ):
            self.rejected.labels(reason=reason)


class BodyError(ValueError):
    """The request body is not what the endpoint takes (status, and the error entry)."""

    def __init__(
        self, status: int, detail: str, errors: list[dict[str, Any]] | None = None, count: int = 1
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.count = count  # records (or lines) in the refused body


def _loads(text: str | bytes) -> Any:
    """``json.loads`` refusing NaN and Infinity (orjson where it reads the same)."""
    return loads_json(text, parse_constant=refuse_json_constant)


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"expected valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"expected UTF-8 text: invalid byte at position {exc.start}"
    return f"expected valid JSON: {exc}"


def parse_records(body: bytes, content_type: str) -> list[Any]:
    """The records in a body: a JSON object or array, or NDJSON (blank lines ignored)."""
    media = content_type.split(";", 1)[0].strip().lower() or "application/json"
    if media in JSON_TYPES:
        try:
            parsed = _loads(body)
        except ValueError as exc:
            raise BodyError(
                422,
                "the body is not valid JSON; nothing was published",
                [{"index": 0, "field": BODY, "reason": _json_problem(exc)}],
            ) from None
        records = parsed if isinstance(parsed, list) else [parsed]
    elif media in NDJSON_TYPES:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyError(
                422,
                "the body is not UTF-8 NDJSON; nothing was published",
                [{"index": 0, "field": BODY, "reason": _json_problem(exc)}],
            ) from None
        records = []
        bad: list[dict[str, Any]] = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append(_loads(line))
            except ValueError as exc:
                bad.append(
                    {
                        "index": len(records) + len(bad),
                        "line": number,
                        "field": BODY,
                        "reason": _json_problem(exc),
                    }
                )
        if bad:
            total = len(records) + len(bad)
            raise BodyError(
                422,
                f"{len(bad)} of {total} NDJSON lines are not valid JSON; nothing was published",
                bad,
                count=total,
            )
    else:
        raise BodyError(
            415,
            f"expected Content-Type application/json or application/x-ndjson, got {media!r}",
        )
    if not records:
        raise BodyError(
            422,
            "the body holds no records; nothing was published",
            [{"index": 0, "field": BODY, "reason": "expected at least one incident event"}],
        )
    return records


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyError(413, TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyError(413, TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


def _count_warnings(metrics: IngestMetrics, source: str, accepted: list[Accepted]) -> None:
    for item in accepted:
        for check in item.warnings:
            metrics.location_warnings.labels(source=source, check=check).inc()


def create_app(
    settings: Settings,
    publisher: Publisher,
    policy: Policy | None = None,
    *,
    tokens: Engine | None = None,
) -> FastAPI:
    """The ingest app; ``publisher`` is where pseudonymised records go (closed by the caller).

    With a ``policy`` whose ``unknown_code`` is ``reject``, a code it does not list is a bad
    record (422), so that it is refused at the door rather than set aside by the worker.
    Posting needs a bearer token of role ``ingest``, checked read-only against the API
    database (``tokens``; default: an engine on ``ASVAT_DATABASE_URL``).
    """
    token_engine = tokens if tokens is not None else lookup_engine(settings.resolved_database_url)
    bearer = HTTPBearer(auto_error=False, description="A token of role ingest.")

    async def ingest_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> Principal:
        challenge = {"WWW-Authenticate": 'Bearer realm="asvat-ingest"'}
        if credentials is None:
            raise HTTPException(401, "a bearer token is required", headers=challenge)
        try:
            principal = await run_in_threadpool(lookup, token_engine, credentials.credentials)
        except AuthUnavailable as exc:
            raise HTTPException(503, str(exc)) from exc
        if principal is None:
            raise HTTPException(401, "unknown or revoked token", headers=challenge)
        if not allows(principal.role, "ingest"):
            raise HTTPException(403, f"role {principal.role!r} cannot post incidents")
        return principal

    keys = load_key_ring(settings)
    submission = Submission(
        keys,
        policy,
        future_skew_seconds=settings.future_skew_seconds,
        area_check=AreaCheck(settings.districts_geojson),
    )
    metrics = IngestMetrics()
    app = FastAPI(
        title="ASVAT ingest",
        description="Receives incident events (contract schemas/incident.v1.json), "
        "pseudonymises callers and publishes them to Kafka.",
        version="1",
    )
    app.state.metrics = metrics
    app.state.submission = submission
    app.state.publisher = publisher

    def refuse(
        status: int, detail: str, errors: list[dict[str, Any]], reason: str, count: int
    ) -> Response:
        metrics.rejected.labels(reason=reason).inc(count)
        content: dict[str, Any] = {"detail": detail}
        if status == 422:
            content["errors"] = errors[:MAX_ERRORS_SHOWN]
            if len(errors) > MAX_ERRORS_SHOWN:
                content["errors_not_shown"] = len(errors) - MAX_ERRORS_SHOWN
        return JSONResponse(status_code=status, content=content)

    @app.post(
        "/v1/incidents",
        status_code=202,
        summary="Submit incident events (JSON object, JSON array or NDJSON)",
        dependencies=[Depends(ingest_token)],
    )
    async def post_incidents(request: Request) -> Response:
        try:
            body = await _read_body(request)
            records = parse_records(body, request.headers.get("content-type", ""))
        except BodyError as exc:
            reason = {413: "body_too_large", 415: "unsupported_media_type"}.get(
                exc.status, "malformed_body"
            )
            metrics.received.inc(exc.count)
            log.info("refused a request body (%s): %s", exc.status, reason)
            return refuse(exc.status, exc.detail, exc.errors, reason, exc.count)

        metrics.received.inc(len(records))
        now_us = now_micros()
        errors: list[dict[str, Any]] = []
        invalid = 0
        for index, record in enumerate(records):
            problems = submission.problems(record, now_us=now_us)
            if problems:
                invalid += 1
                errors.extend(
                    {"index": index, "field": p.field, "reason": p.reason} for p in problems
                )
        if invalid:
            # Field names only: reasons may describe the values.
            log.info(
                "refused %d records (%d invalid) at fields %s",
                len(records),
                invalid,
                sorted({str(e["field"]) for e in errors}),
            )
            return refuse(
                422,
                f"{invalid} of {len(records)} records are invalid; nothing was published",
                errors,
                "invalid_record",
                len(records),
            )

        ingested_at = format_timestamp(now_us)
        valid: list[dict[str, Any]] = records
        prepared = submission.pseudonymise_all(valid, ingested_at=ingested_at)
        out: list[tuple[str, bytes]] = [(item.key, item.value) for item in prepared]

        started = time.perf_counter()
        try:
            await run_in_threadpool(publisher.publish, out)
        except BrokerUnavailable as exc:
            metrics.publish_seconds.observe(time.perf_counter() - started)
            metrics.rejected.labels(reason="broker_unavailable").inc(len(out))
            log.warning("publish of %d records failed: %s", len(out), exc, extra=ids_of(valid))
            return JSONResponse(
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                content={
                    "detail": "the Kafka broker did not acknowledge every record in time: "
                    "assume none of the records in this request was accepted. Re-send the "
                    "whole request; that is safe, because records already received are "
                    "ignored downstream by event_id.",
                    "retry_after_seconds": RETRY_AFTER_SECONDS,
                },
            )
        metrics.publish_seconds.observe(time.perf_counter() - started)
        metrics.accepted.inc(len(out))
        _count_warnings(metrics, "http", prepared)
        # The ids go in the line's event_ids field only: every id is passed through the
        # phone-number redaction, and naming them in the message too doubled that.
        log.info("accepted %d records", len(out), extra=ids_of(valid))
        return JSONResponse(
            status_code=202,
            content={"accepted": len(out), "event_ids": [str(r["event_id"]) for r in valid]},
        )

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the Kafka broker answers a metadata request")
    async def readyz() -> Response:
        try:
            await run_in_threadpool(publisher.check_ready, READY_TIMEOUT_SECONDS)
        except BrokerUnavailable as exc:
            return JSONResponse(
                status_code=503, content={"status": "not ready", "detail": str(exc)}
            )
        return JSONResponse(status_code=200, content={"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
