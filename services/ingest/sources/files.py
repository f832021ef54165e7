"""``asvat ingest-file``: batch files from exports, through the same path as HTTP ingest.

Formats: ``ndjson`` (one incident.v1 event per line), ``csv`` (with a column-mapping YAML,
see :mod:`services.ingest.sources.csv_mapping`), ``police-uk`` (data.police.uk street-level
CSV, see :mod:`services.ingest.sources.police_uk`) and ``bus-feedback`` (one
bus-feedback.v1 report per line, see :mod:`services.ingest.sources.bus`).

Records go to ``asvat.incidents.v1`` in batches; every rejected line or record goes to
``asvat.incidents.dlq.v1`` with its line number and reasons, and reading carries on. After
each batch is acknowledged (incidents and dead letters), a checkpoint records the byte
offset and line reached (:mod:`services.ingest.sources.checkpoint`): an interrupted load
run again resumes there, and a finished one is not loaded again (``restart=True`` forces
it; event ids are deterministic, so the replay is a duplicate downstream). Lines are read
in bounded memory (:mod:`services.ingest.sources.lines`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from asvat.contracts import FieldError, refuse_json_constant
from asvat.domain.timeutil import now_micros
from services.ingest.dead_letters import (
    BUS_FORMAT,
    INCIDENT_FORMAT,
    Delivery,
    Origin,
    dead_letter,
)
from services.ingest.sources.bus import BusNetwork
from services.ingest.sources.checkpoint import Checkpoint, file_identity
from services.ingest.sources.csv_mapping import CsvMapping, CsvRows, MappingError
from services.ingest.sources.lines import MAX_LINE_BYTES, Line, read_lines
from services.ingest.sources.police_uk import PoliceUkRows, nuisance_code
from services.ingest.submission import Accepted, Rejected, SourceError, Submission

FORMATS = ("ndjson", "csv", "police-uk", "bus-feedback")
BATCH_SIZE = 500
_TRUNCATED = " (the file ends mid-line: truncated?)"


class FileFormatError(ValueError):
    """The file cannot be read in this format at all (header, mapping): nothing published."""


@dataclass
class Parsed:
    """One line's outcome: a record to submit, a rejection, or a line skipped (why)."""

    record: Any = None
    errors: list[FieldError] = field(default_factory=list)
    record_format: str = INCIDENT_FORMAT
    skipped: str | None = None


@dataclass
class FileReport:
    """What one run did (the counts are this run's, plus ``resumed_at_line``)."""

    lines: int = 0
    published: int = 0
    dead_letters: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    resumed_at_line: int = 0
    already_complete: bool = False
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.already_complete:
            return (
                "already loaded completely (checkpoint); nothing to do (--restart loads it again)"
            )
        parts = [
            f"{self.lines} lines read"
            + (f" (resumed after line {self.resumed_at_line})" if self.resumed_at_line else ""),
            f"{self.published} incidents published",
            f"{self.dead_letters} dead letters",
        ]
        if self.skipped:
            parts.append(
                "skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            )
        text = "; ".join(parts)
        if self.reasons:
            text += "\ndead letters by reason: " + ", ".join(
                f"{k}: {v}" for k, v in sorted(self.reasons.items())
            )
        if self.warnings:
            text += "\nflagged (published): " + ", ".join(
                f"{k}: {v}" for k, v in sorted(self.warnings.items())
            )
        return text


class _Format:
    """How one format reads its lines."""

    has_header = False

    def header(self, line: Line) -> None:  # pragma: no cover - formats with headers override
        pass

    def parse(self, line: Line) -> Parsed:
        raise NotImplementedError


class _Ndjson(_Format):
    def parse(self, line: Line) -> Parsed:
        assert line.text is not None
        try:
            return Parsed(json.loads(line.text, parse_constant=refuse_json_constant))
        except ValueError as exc:
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            reason = f"expected valid JSON: {message}{where}"
            return Parsed(errors=[SourceError("(line)", reason, "not_json")])


class _Bus(_Ndjson):
    def __init__(self, network: BusNetwork) -> None:
        self.network = network

    def parse(self, line: Line) -> Parsed:
        parsed = super().parse(line)
        if parsed.errors:
            return parsed
        report = parsed.record
        if not isinstance(report, dict):
            return Parsed(errors=[FieldError("(record)", "expected a JSON object")])
        record, errors = self.network.to_incident(report)
        if record is None:
            return Parsed(report, errors, BUS_FORMAT)
        return Parsed(record)


class _Headed(_Format):
    """A format whose first line is a header its rows reader checks."""

    has_header = True
    rows: CsvRows | PoliceUkRows

    def header(self, line: Line) -> None:
        if line.text is None:
            raise FileFormatError(f"line 1: cannot read the header: {line.error}")
        try:
            self.rows.header(line.text)
        except MappingError as exc:
            raise FileFormatError(str(exc)) from exc


class _Csv(_Headed):
    rows: CsvRows

    def __init__(self, mapping: CsvMapping) -> None:
        self.rows = CsvRows(mapping)

    def parse(self, line: Line) -> Parsed:
        assert line.text is not None
        record, errors = self.rows.convert(line.text)
        return Parsed(record, errors)


class _PoliceUk(_Headed):
    rows: PoliceUkRows

    def __init__(self, code: str) -> None:
        self.rows = PoliceUkRows(code)

    def parse(self, line: Line) -> Parsed:
        assert line.text is not None
        record, errors, skipped = self.rows.convert(line.text, line.number)
        if skipped:
            return Parsed(skipped="not anti-social behaviour")
        return Parsed(record, errors)


def reader_for(
    file_format: str,
    *,
    mapping: CsvMapping | None = None,
    network: BusNetwork | None = None,
    submission: Submission | None = None,
) -> _Format:
    if file_format == "ndjson":
        return _Ndjson()
    if file_format == "csv":
        if mapping is None:
            raise FileFormatError("--format csv needs --mapping MAP.yaml (see the README)")
        return _Csv(mapping)
    if file_format == "police-uk":
        return _PoliceUk(nuisance_code(submission.policy if submission else None))
    if file_format == "bus-feedback":
        return _Bus(network or BusNetwork.load())
    raise FileFormatError(f"expected a format among {', '.join(FORMATS)}, got {file_format!r}")


def ingest_file(
    path: Path,
    file_format: str,
    *,
    submission: Submission,
    delivery: Delivery,
    data_dir: Path,
    mapping: CsvMapping | None = None,
    network: BusNetwork | None = None,
    batch_size: int = BATCH_SIZE,
    max_line_bytes: int = MAX_LINE_BYTES,
    restart: bool = False,
    progress: bool = True,
    err: IO[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> FileReport:
    """Load ``path``; returns what was done. Raises :class:`FileFormatError` before
    publishing anything when the file cannot be read in ``file_format`` at all, and
    :class:`~services.ingest.publisher.BrokerUnavailable` when the broker stops
    acknowledging (the checkpoint then holds the last acknowledged batch)."""
    err = err if err is not None else sys.stderr
    reader = reader_for(file_format, mapping=mapping, network=network, submission=submission)
    source = file_format
    file_id = file_identity(path, file_format)
    checkpoint = Checkpoint.load(data_dir, file_id, file_format)
    if restart:
        checkpoint = Checkpoint(file_id, file_format, path=checkpoint.path)
    report = FileReport(resumed_at_line=checkpoint.line)
    if checkpoint.complete:
        report.already_complete = True
        return report
    size = path.stat().st_size
    with path.open("rb") as stream:
        offset, number = checkpoint.offset, checkpoint.line
        if reader.has_header:
            first = next(read_lines(stream, max_bytes=max_line_bytes), None)
            if first is None:
                raise FileFormatError("the file is empty: expected a header line")
            reader.header(first)
            if number == 0:
                offset, number = first.end, first.number
        bar = tqdm(
            total=size,
            initial=offset,
            unit="B",
            unit_scale=True,
            disable=not progress,
            file=err,
            desc=path.name[:30],
            mininterval=0.5,
        )
        batch: list[tuple[Line, Parsed]] = []
        batches = 0
        try:
            for line in read_lines(stream, offset=offset, number=number, max_bytes=max_line_bytes):
                report.lines += 1
                if line.error is not None:
                    parsed = Parsed(errors=[line.error])
                elif not line.text or not line.text.strip():
                    parsed = Parsed(skipped="blank line")
                else:
                    parsed = reader.parse(line)
                if parsed.errors and not line.complete:
                    parsed.errors = [_truncated(e) for e in parsed.errors]
                batch.append((line, parsed))
                if len(batch) >= batch_size:
                    _flush(batch, report, checkpoint, source, path, submission, delivery)
                    bar.update(batch[-1][0].end - bar.n)
                    bar.set_postfix(published=report.published, dlq=report.dead_letters)
                    batches += 1
                    batch = []
                    if on_batch is not None:
                        on_batch(batches)
            if batch:
                _flush(batch, report, checkpoint, source, path, submission, delivery)
                bar.update(batch[-1][0].end - bar.n)
        finally:
            bar.close()
    checkpoint.complete = True
    checkpoint.save()
    return report


def _truncated(error: FieldError) -> FieldError:
    if isinstance(error, SourceError):
        return SourceError(error.field, error.reason + _TRUNCATED, error.code)
    return FieldError(error.field, error.reason + _TRUNCATED)


def _flush(
    batch: list[tuple[Line, Parsed]],
    report: FileReport,
    checkpoint: Checkpoint,
    source: str,
    path: Path,
    submission: Submission,
    delivery: Delivery,
) -> None:
    """Submit one batch, deliver it, and only then move the checkpoint past it."""
    now = now_micros()
    letters: list[dict[str, Any]] = []
    accepted: list[Accepted] = []
    skipped: Counter[str] = Counter()

    def letter(line: Line, rejected: Rejected, record_format: str) -> None:
        origin = Origin(file=path.name, file_id=checkpoint.file_id, line=line.number)
        letters.append(
            dead_letter(
                rejected,
                source=source,
                origin=origin,
                keys=submission.keys,
                record_format=record_format,
                now_us=now,
            )
        )

    for line, parsed in batch:
        if parsed.skipped is not None:
            skipped[parsed.skipped] += 1
            continue
        if parsed.errors:
            letter(line, Rejected(parsed.record, tuple(parsed.errors)), parsed.record_format)
            continue
        good, bad = submission.submit([parsed.record], now_us=now)
        accepted += good
        for rejected in bad:
            letter(line, rejected, INCIDENT_FORMAT)
    delivery.deliver(source, accepted, letters)
    # Acknowledged: count it, and move the checkpoint past it.
    report.published += len(accepted)
    report.dead_letters += len(letters)
    report.skipped.update(skipped)
    for message in letters:
        report.reasons[str(message["reason"])] += 1
        if len(report.problems) < 1000:
            report.problems.append(_problem_line(path, message))
    for item in accepted:
        report.warnings.update(item.warnings)
    last = batch[-1][0]
    checkpoint.offset, checkpoint.line = last.end, last.number
    counts = Counter(checkpoint.counts)
    counts.update(
        {"published": len(accepted), "dead_letters": len(letters), "skipped": sum(skipped.values())}
    )
    checkpoint.counts = dict(counts)
    checkpoint.save()


def _problem_line(path: Path, letter: dict[str, Any]) -> str:
    errors = "; ".join(f"{e['field']}: {e['reason']}" for e in letter["errors"])
    return f"{path.name}:{letter['origin'].get('line')}: {letter['reason']}: {errors}"
