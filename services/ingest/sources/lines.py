"""Reading a file line by line in bounded memory, with byte offsets for resumption.

A line longer than the bound is never held whole: the reader keeps only its first
``max_bytes`` and skips the rest in 1 MiB steps, then reports the line as too long. A line
that is not UTF-8 is reported with the byte and column. Either way reading continues with
the next line. A UTF-8 byte-order mark at the start of the file is ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from services.ingest.submission import SourceError

#: The longest line read (bytes, newline included); longer lines are rejected unread.
MAX_LINE_BYTES = 1024 * 1024
_SKIP_STEP = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Line:
    """One physical line: its number (from 1), byte span, text or the reason it has none."""

    number: int
    start: int
    end: int
    text: str | None
    error: SourceError | None = None
    #: False for a last line that does not end with a newline (the file may be truncated).
    complete: bool = True


def read_lines(
    stream: BinaryIO,
    *,
    offset: int = 0,
    number: int = 0,
    max_bytes: int = MAX_LINE_BYTES,
) -> Iterator[Line]:
    """The lines of ``stream`` from byte ``offset`` (the start of line ``number + 1``)."""
    stream.seek(offset)
    while True:
        chunk = stream.readline(max_bytes + 1)
        if not chunk:
            return
        number += 1
        start = offset
        if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
            size = len(chunk)
            del chunk
            while True:  # skip the rest of the line without keeping it
                more = stream.readline(_SKIP_STEP)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            offset += size
            yield Line(
                number,
                start,
                offset,
                None,
                SourceError(
                    "(line)",
                    f"expected a line of at most {max_bytes} bytes, got {size} bytes (not read)",
                    "line_too_long",
                ),
            )
            continue
        offset += len(chunk)
        complete = chunk.endswith(b"\n")
        raw = chunk.rstrip(b"\r\n")
        if start == 0 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start]
            yield Line(
                number,
                start,
                offset,
                None,
                SourceError(
                    "(line)",
                    f"expected UTF-8 text, got byte 0x{bad:02x} at column {exc.start + 1} "
                    "(latin-1 or Windows-1252? re-export the file as UTF-8)",
                    "not_utf8",
                ),
                complete,
            )
            continue
        yield Line(number, start, offset, text, None, complete)
