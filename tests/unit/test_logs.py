"""Structured JSON logs: one object per line, context ids as fields, no raw identifiers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings

from asvat.logs import JsonFormatter, configure_logging, ids_of, redact


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[io.StringIO]:
    """Logging configured as a service does, into a string; the root logger restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging(make_settings(tmp_path, log_level="info"), "ingest", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_line_with_service_level_and_context(
    captured: io.StringIO,
) -> None:
    log = logging.getLogger("asvat.ingest")
    log.info(
        "accepted %d records", 1, extra={"event_id": "NB-1-0", "incident_id": "NB-1", "count": 1}
    )
    log.debug("not at INFO")
    (line,) = lines(captured)
    assert line["service"] == "ingest"
    assert line["level"] == "INFO"
    assert line["logger"] == "asvat.ingest"
    assert line["message"] == "accepted 1 records"
    assert (line["event_id"], line["incident_id"], line["count"]) == ("NB-1-0", "NB-1", 1)
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_extra_fields_outside_the_context_list_are_left_out(captured: io.StringIO) -> None:
    logging.getLogger("asvat.test").warning(
        "careless", extra={"caller": {"phone": "07412 345678"}, "incident_id": "NB-2"}
    )
    (line,) = lines(captured)
    assert "caller" not in line and "07412" not in json.dumps(line)
    assert line["incident_id"] == "NB-2"


def test_phone_numbers_and_emails_in_messages_and_tracebacks_are_redacted(
    captured: io.StringIO,
) -> None:
    log = logging.getLogger("asvat.test")
    log.info("caller 07412 345678 rang, also +44 7412 345678 and 447412345678")
    try:
        raise ValueError("bad caller jo.bloggs@example.org 0191 498 0123")
    except ValueError:
        log.exception("failed")
    first, second = lines(captured)
    assert first["message"] == "caller [phone] rang, also [phone] and [phone]"
    text = json.dumps(second)
    assert "[email]" in text and "[phone]" in text
    assert "jo.bloggs" not in text and "498 0123" not in text
    assert second["exception"].startswith("Traceback")


def test_ids_dates_and_offsets_are_not_mistaken_for_phone_numbers() -> None:
    text = "NB-2022-000123-0 at 2026-11-20T21:15:00Z offset 1234567890 E2E-1-0"
    assert redact(text) == text


def test_log_level_comes_from_settings_and_a_bad_one_stops_the_program(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(make_settings(tmp_path, log_level="WARNING"), "api", stream=io.StringIO())
        assert root.level == logging.WARNING
        configure_logging(make_settings(tmp_path, log_level="debug"), "api", stream=io.StringIO())
        assert root.level == logging.DEBUG
        ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
        assert len(ours) == 1, "configuring twice must replace, not add, the handler"
        with pytest.raises(SystemExit) as stopped:
            configure_logging(make_settings(tmp_path, log_level="LOUD"), "api")
        assert str(stopped.value) == (
            "asvat api: ASVAT_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, "
            "CRITICAL, got 'LOUD'"
        )
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_ids_of_names_one_event_or_counts_a_batch() -> None:
    one = ids_of([{"event_id": "E-1", "incident_id": "NB-1", "caller": {"phone": "x"}}])
    assert one == {"event_id": "E-1", "incident_id": "NB-1", "count": 1}
    many = ids_of({"event_id": f"E-{n}", "incident_id": "NB-1"} for n in range(25))
    assert many["count"] == 25 and len(many["event_ids"]) == 20
