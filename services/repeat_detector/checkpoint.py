"""The worker's checkpoint: its detector's state and the offsets it was taken at, in one
local file, so that a restarted worker reads only what came after.

Without it a restarted worker reads the whole incidents topic again (``replica.py``): for a
national year, minutes with nothing published (README, "Performance"). With it, it loads
the state (:mod:`asvat.domain.checkpoint`), seeks each partition to the offset the state
had reached, and reads from there. The topic remains the source of truth: a checkpoint
that does not fit (another policy or format, another partition count, a broker that has
since lost its topics: a new epoch) is set aside, and the worker reads from the start as
before, keeping the state it loaded (what it reads again is duplicates, ignored).

The file (``ASVAT_WORKER_CHECKPOINT_DIR``/``checkpoint.bin``)::

    ASVAT-CHECKPOINT 1\n       magic and layout version
    <n>\n                      length of the JSON description that follows
    {meta}                     offsets per partition, broker epochs, partitions, policy
                               digest, when written, retained incidents, watermark, and the
                               state's size and SHA-256
    <state>                    the encoded state

A write goes to a temporary file in the same directory, is flushed to disk (``fsync``) and
renamed over the old one, and the directory is synced: a crash at any point leaves the
previous checkpoint or the new one, whole. A read checks the size and SHA-256 before using
anything.

Writing: the state is encoded in a *forked child* (:class:`CheckpointWriter`), as Redis
writes its snapshots: the fork is a consistent copy of the detector at a batch boundary,
and the worker goes on publishing while the child encodes and writes (seconds for a large
force). Memory pages the child reads are copied as the parent changes them: size a worker
for up to twice its state while a checkpoint is written.

Why a file and not RocksDB (the store faust's tables use): the state is one value written
whole, which a rename makes atomic; and RocksDB runs background threads from the first
open, after which a forked child that opens it may deadlock (RocksDB is not fork-safe).
The first version of this module used rocksdict and its forked writer hung in the tests.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asvat.domain import checkpoint as codec
from asvat.domain.detector import Detector
from asvat.domain.policy import Policy

log = logging.getLogger("asvat.worker")

_PR_SET_PDEATHSIG = 1
MAGIC = b"ASVAT-CHECKPOINT 1\n"
FILE_NAME = "checkpoint.bin"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: its description (``meta``) and the state's bytes."""

    meta: dict[str, Any]
    blob: bytes

    @property
    def offsets(self) -> dict[int, int]:
        """Next offset to read, per partition of the incidents topic."""
        return {int(p): int(o) for p, o in self.meta["offsets"].items()}

    @property
    def epochs(self) -> set[str]:
        return {str(e) for e in self.meta["epochs"]}


class CheckpointStore:
    """One worker's checkpoint file, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory
        self.file = directory / FILE_NAME

    def read(self) -> Checkpoint | None:
        """The last checkpoint written, or None when there is none. Raises
        :class:`~asvat.domain.checkpoint.CheckpointError` when it is damaged."""
        try:
            data = self.file.read_bytes()
        except FileNotFoundError:
            return None
        if not data.startswith(MAGIC):
            raise codec.CheckpointError(f"{self.file} is not a checkpoint of this layout")
        try:
            length_end = data.index(b"\n", len(MAGIC))
            length = int(data[len(MAGIC) : length_end])
            meta = json.loads(data[length_end + 1 : length_end + 1 + length])
            blob = data[length_end + 1 + length :]
            size, digest = int(meta["size"]), str(meta["sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise codec.CheckpointError(f"unreadable checkpoint description: {exc}") from exc
        if len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
            raise codec.CheckpointError("checkpoint state does not match its size and SHA-256")
        return Checkpoint(meta, blob)

    def leftovers(self) -> list[Path]:
        """Temporary files of writes that never finished (a writer killed by the kernel, or
        with its worker, gets no chance to remove its own): each is as large as a
        checkpoint and holds the same personal data."""
        return sorted(self.path.glob(f".{FILE_NAME}.*.tmp"))

    def remove_leftovers(self) -> list[Path]:
        """Delete :meth:`leftovers` (call only while no writer runs); the files removed."""
        removed = self.leftovers()
        for leftover in removed:
            leftover.unlink(missing_ok=True)
        return removed

    def write(self, meta: dict[str, Any], blob: bytes) -> dict[str, Any]:
        """Store ``blob`` as the new checkpoint described by ``meta`` (to which its size
        and SHA-256 are added), atomically; returns the full description."""
        full = {**meta, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        described = json.dumps(full, sort_keys=True).encode()
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self.path / f".{FILE_NAME}.{os.getpid()}.tmp"
        try:
            # Owner-only: it holds what the worker holds (pseudonymised, but personal data).
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(MAGIC + b"%d\n" % len(described) + described)
                out.write(blob)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.file)
        finally:
            temporary.unlink(missing_ok=True)
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return full


def code_digest() -> str:
    """SHA-256 of the domain core's sources: a checkpoint is loaded only by the code that
    wrote it. The encoding names classes and gives their fields in order; after an
    upgrade that changed them it could be misread, so it is not read at all (the worker
    rebuilds from the topic once, then writes checkpoints of the new code)."""
    digest = hashlib.sha256()
    for source in sorted(Path(codec.__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()


def refusals(meta: dict[str, Any], policy: Policy, partitions: int) -> list[str]:
    """Why a checkpoint described by ``meta`` would be set aside by a worker of ``policy``
    on a topic of ``partitions`` (empty: it would be loaded). The encoded state carries
    its own policy digest, which loading checks again."""
    reasons = []
    if int(meta["partitions"]) != partitions:
        reasons.append(f"checkpoint of {meta['partitions']} partitions, the topic has {partitions}")
    if meta.get("code") != code_digest():
        reasons.append("checkpoint written by another version of the domain code")
    if meta.get("policy") != codec.policy_digest(policy):
        reasons.append("checkpoint written under another policy")
    return reasons


def restore(
    store: CheckpointStore, policy: Policy, partitions: int
) -> tuple[Detector, Checkpoint] | None:
    """The detector and checkpoint to start from, or None (none, or unusable: said why)."""
    started = time.perf_counter()
    try:
        found = store.read()
        if found is None:
            log.info("no checkpoint in %s: reading the topic from the start", store.path)
            return None
        for reason in refusals(found.meta, policy, partitions):
            raise codec.CheckpointError(reason)
        was_enabled = gc.isenabled()
        gc.disable()  # millions of new objects, none garbage: the collector would only walk them
        try:
            detector = codec.load(found.blob, policy)
        finally:
            if was_enabled:
                gc.enable()
    except (codec.CheckpointError, ValueError, KeyError, TypeError, OSError) as exc:
        log.warning("checkpoint in %s not used (%s): reading the topic from the start",
                    store.path, exc)
        return None
    log.info(
        "loaded the checkpoint written at %s: %d incidents, offsets %s, in %.1f s",
        found.meta.get("written_at"), detector.retained_incidents, found.offsets,
        time.perf_counter() - started,
    )
    return detector, found


def inspect(store: CheckpointStore, policy: Policy, partitions: int) -> dict[str, Any]:
    """What ``asvat checkpoint show`` reports: the checkpoint's description, whether a
    worker of ``policy`` on ``partitions`` partitions would load it (``usable``) and, if
    not, why (``refused``); temporary files left by writes that never finished. Reads and
    checks the whole file (size and SHA-256), never decodes the state."""
    report: dict[str, Any] = {
        "directory": str(store.path),
        "leftovers": [p.name for p in store.leftovers()],
    }
    try:
        found = store.read()
    except (codec.CheckpointError, OSError) as exc:
        return {**report, "usable": False, "refused": [f"damaged: {exc}"]}
    if found is None:
        return {**report, "usable": False, "refused": ["no checkpoint"]}
    meta = found.meta
    reasons = refusals(meta, policy, partitions)
    stat = store.file.stat()
    return {
        **report,
        "usable": not reasons,
        "refused": reasons,
        "file": str(store.file),
        "mode": f"{stat.st_mode & 0o777:04o}",
        **{k: meta.get(k) for k in (
            "written_at", "retained_incidents", "watermark", "offsets", "epochs", "partitions",
            "size", "format",
        )},
    }


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this process when its parent (pid ``parent``) dies, so
    that a writer never outlives its worker: it could rename its older state over the one
    the restarted worker wrote meanwhile."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent died before prctl took effect. (Not "parent is 1": in a container the
        # worker itself is often pid 1.)
        if os.getppid() != parent:
            os._exit(1)


def _default_signals() -> None:
    """The worker's event loop handles SIGTERM and SIGINT through a wake-up fd the fork
    shares with it: a signal to the writer must not wake the worker's loop, nor run its
    handlers in the writer. The writer just dies of them."""
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)


def _yield_the_cpu() -> None:
    """Run the writer only on CPU the services leave idle (Linux ``SCHED_IDLE``, else
    the lowest priority): a checkpoint may take longer, an alert must not."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:
            pass
    os.nice(19)


def _first_to_go() -> None:
    """If memory runs out while the writer runs, the kernel should kill the writer, not
    the worker (Linux ``oom_score_adj``; a process may always raise its own)."""
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as adj:
            adj.write("1000")
    except OSError:
        pass


def _private_bytes() -> int | None:
    """Memory this process holds that its parent does not share (Linux): the pages the
    fork copied as the writer touched them, and the encoded state. None where unknown."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
            kib = sum(
                int(line.split()[1]) for line in rollup
                if line.startswith(("Private_Clean:", "Private_Dirty:"))
            )
    except (OSError, ValueError, IndexError):
        return None
    return kib * 1024


class CheckpointWriter:
    """Writes checkpoints from a forked child, one at a time; :meth:`poll` collects the
    child's result without waiting."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._child: tuple[int, int, float, dict[str, Any]] | None = None  # pid, fd, start, meta

    @property
    def writing(self) -> bool:
        return self._child is not None

    def start(self, detector: Detector, meta: dict[str, Any]) -> bool:
        """Fork a child that writes ``detector``'s state with ``meta``; False if one is
        still writing. Call at a batch boundary: the child writes the state as it is now."""
        if self._child is not None:
            return False
        for leftover in self.store.remove_leftovers():
            log.warning("removed %s, left by a checkpoint writer that did not finish", leftover)
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: encode, write, report, exit (never back to the event loop)
            os.close(read_end)
            code = 1
            try:
                _die_with_parent(parent)
                _default_signals()
                _yield_the_cpu()
                _first_to_go()
                gc.disable()
                began = time.perf_counter()
                blob = codec.dump(detector)
                full = self.store.write(meta, blob)
                report = {"ok": True, "size": full["size"], "seconds": time.perf_counter() - began,
                          "private_bytes": _private_bytes()}
                code = 0
            except BaseException as exc:  # anything: the parent must hear of it
                report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                os.write(write_end, json.dumps(report).encode())
            finally:
                os._exit(code)
        os.close(write_end)
        self._child = (pid, read_end, time.perf_counter(), meta)
        return True

    def poll(self) -> dict[str, Any] | None:
        """The finished child's report (``ok``, and ``size``/``seconds`` or ``error``), or
        None while it writes or when none was started."""
        if self._child is None:
            return None
        pid, fd, began, meta = self._child
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            return None
        self._child = None
        try:
            raw = os.read(fd, 65536)
        finally:
            os.close(fd)
        try:
            report: dict[str, Any] = json.loads(raw) if raw else {}
        except ValueError:
            report = {}
        if not report:
            report = {"ok": False, "error": f"the writer exited with status {status}"}
        report["elapsed"] = time.perf_counter() - began
        report["meta"] = meta
        return report

    def wait(self, timeout: float) -> dict[str, Any] | None:
        """Wait up to ``timeout`` seconds for the child writing now, and give its report
        (None if it is still writing, or none was started). Blocks: while running, the
        worker polls; a stopping worker calls this in a thread for its final checkpoint."""
        deadline = time.monotonic() + timeout
        while self._child is not None and time.monotonic() < deadline:
            report = self.poll()
            if report is not None:
                return report
            time.sleep(0.05)
        return None
