"""Where ``asvat ingest-file`` got to in a file, so that an interrupted load resumes.

One small JSON file per input file under ``$ASVAT_DATA_DIR/checkpoints/ingest-file/``,
named by the file's identity: SHA-256 of its absolute path, its size, the format and a
SHA-256 of its first 64 KiB. A file that changed (appended to, edited, replaced) is a new
identity and is loaded from the start; event ids are deterministic, so what was already
published is a duplicate downstream and counts once.

The checkpoint holds only the identity, the byte offset and line number just after the
last batch the broker acknowledged (incidents and dead letters both), counts, and whether
the file is complete. No path, no record content: nothing personal. It is replaced
atomically (written beside, then renamed), so an interruption leaves the old or the new
one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asvat.domain.timeutil import format_timestamp, now_micros

HEAD_BYTES = 64 * 1024
RELATIVE_DIR = Path("checkpoints") / "ingest-file"


def file_identity(path: Path, file_format: str) -> str:
    """SHA-256 (hex) of the absolute path, size, format and the first 64 KiB."""
    resolved = path.resolve()
    size = resolved.stat().st_size
    with resolved.open("rb") as stream:
        head = hashlib.sha256(stream.read(HEAD_BYTES)).hexdigest()
    text = f"{resolved}\0{size}\0{file_format}\0{head}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Checkpoint:
    """Progress through one file (see the module docstring)."""

    file_id: str
    file_format: str
    offset: int = 0
    line: int = 0
    complete: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    updated_at: str = ""
    path: Path | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, data_dir: Path, file_id: str, file_format: str) -> Checkpoint:
        path = data_dir / RELATIVE_DIR / f"{file_id}.json"
        try:
            stored: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(file_id, file_format, path=path)
        return cls(
            file_id=file_id,
            file_format=file_format,
            offset=int(stored.get("offset", 0)),
            line=int(stored.get("line", 0)),
            complete=bool(stored.get("complete", False)),
            counts={str(k): int(v) for k, v in dict(stored.get("counts", {})).items()},
            updated_at=str(stored.get("updated_at", "")),
            path=path,
        )

    def save(self) -> None:
        assert self.path is not None
        self.updated_at = format_timestamp(now_micros())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {k: v for k, v in asdict(self).items() if k != "path"}
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(body, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def forget(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()
