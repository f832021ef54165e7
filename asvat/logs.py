"""Structured logs for every asvat service: one JSON object per line on stderr.

Each line has ``time`` (UTC, RFC 3339), ``level``, ``service``, ``logger`` and
``message``, then the context fields a call passes with ``extra=`` (only those named in
:data:`CONTEXT_FIELDS`: ``event_id``, ``incident_id`` and the like), then ``exception``
when there is one. For example::

    log.info("escalation raised", extra={"incident_id": "NB-1", "rule_id": "victim-28d"})

    {"time": "2026-11-20T21:15:00.123Z", "level": "INFO", "service": "worker",
     "logger": "asvat.worker", "message": "escalation raised", "incident_id": "NB-1",
     "rule_id": "victim-28d"}

A log must never carry a raw caller identifier (phone number, name, e-mail). The services
only ever log pseudonymised data and ids, and as a second line of defence this formatter
replaces anything in a message or traceback that parses as a phone number (GB rules,
``phonenumbers``) or looks like an e-mail address by ``[phone]`` / ``[email]``. Names
cannot be recognised that way: that part rests on never logging record contents.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

import phonenumbers

from asvat.settings import Settings

#: Fields a log call may add with ``extra=``; anything else passed that way is left out,
#: so that a careless ``extra={"caller": ...}`` cannot leak a record into the logs.
CONTEXT_FIELDS = (
    "event_id",
    "incident_id",
    "event_ids",
    "escalation_id",
    "assessment_id",
    "rule_id",
    "subject_type",
    "count",
    "topic",
    "partition",
    "offset",
    "status",
    "reason",
)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: How many ids :func:`ids_of` names before it only counts.
MAX_IDS_LOGGED = 20

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
#: Cheap test before the phone-number matcher: seven or more digits, spaces and dashes
#: allowed between them.
_DIGITS = re.compile(r"\d(?:[\s().-]*\d){6,}")
_HANDLER_MARK = "_asvat_json_handler"


def redact(text: str) -> str:
    """``text`` with phone numbers and e-mail addresses replaced by placeholders."""
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    if not _DIGITS.search(text):
        return text
    matches = list(phonenumbers.PhoneNumberMatcher(text, "GB"))
    for match in reversed(matches):
        text = text[: match.start] + "[phone]" + text[match.end :]
    return text


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        doc: dict[str, Any] = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = _plain(value)
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exception"] = redact(record.exc_text)
        return json.dumps(doc, ensure_ascii=False, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool):
        return redact(value) if isinstance(value, str) else value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return redact(str(value))


def log_level(settings: Settings) -> int:
    """The level ``ASVAT_LOG_LEVEL`` names; ValueError naming the variable if it is not one."""
    name = settings.log_level.strip().upper()
    if name not in LEVELS:
        raise ValueError(
            f"ASVAT_LOG_LEVEL: expected one of {', '.join(LEVELS)}, got {settings.log_level!r}"
        )
    return int(logging.getLevelName(name))


def configure_logging(settings: Settings, service: str, *, stream: IO[str] | None = None) -> None:
    """Send every log record of this process, as JSON lines, to ``stream`` (stderr).

    Idempotent: a second call replaces the handler the first one installed. Handlers
    others installed (pytest's capture, say) are left in place. A bad ``ASVAT_LOG_LEVEL``
    stops the program with one line saying so.
    """
    try:
        level = log_level(settings)
    except ValueError as exc:
        raise SystemExit(f"asvat {service}: {exc}") from None
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    # kafka-python is chatty at INFO (every connection and metadata refresh).
    logging.getLogger("kafka").setLevel(max(level, logging.WARNING))
    # Libraries that configure their own handlers (uvicorn) are run with log_config=None,
    # so their records reach the root handler here.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def ids_of(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Context fields for a log line about ``records``: the ids of one event, or the event
    ids of a batch (the first :data:`MAX_IDS_LOGGED`) and how many there were."""
    items = list(records)
    if len(items) == 1:
        return {
            "event_id": str(items[0].get("event_id")),
            "incident_id": str(items[0].get("incident_id")),
            "count": 1,
        }
    return {
        "event_ids": [str(r.get("event_id")) for r in items[:MAX_IDS_LOGGED]],
        "count": len(items),
    }
