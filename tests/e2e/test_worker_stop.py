"""A worker process stopped as an operator stops it (SIGTERM: a rollout, ``docker stop``,
Ctrl-C in ``asvat up``) writes its state before it goes, so that its restart reads nothing
again. Real processes: the embedded broker and ``python -m asvat worker``, whose faust
shutdown cancels the replica's task; checkpoints are an hour apart here, so only the
one written on caught up and the final one can exist."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from asvat.embedded.broker import EmbeddedBroker, ensure_topics
from asvat.settings import TOPIC_INCIDENTS
from bench.pipeline_processes import Pipeline, free_port, wait_for
from services.repeat_detector.checkpoint import CheckpointStore
from tests.integration.test_replica import MINUTE, T0, wire_event

pytestmark = pytest.mark.e2e

PARTITIONS = 4


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    ports = {name: free_port() for name in ("broker", "api", "ingest", "worker-a")}
    broker = EmbeddedBroker(ports["broker"], log_path=tmp_path / "broker.log")
    broker.start()
    system = Pipeline(tmp_path, ports, broker,
                      extra_env={"ASVAT_WORKER_CHECKPOINT_SECONDS": "3600"})
    try:
        ensure_topics(broker.bootstrap, PARTITIONS)
        yield system
    finally:
        system.stop_all()


def publish(pipeline: Pipeline, first: int, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=pipeline.broker.bootstrap, linger_ms=20)
    for n in range(first, first + count):
        producer.send(TOPIC_INCIDENTS, wire_event(n, T0 + n * MINUTE), partition=n % PARTITIONS)
    producer.flush()
    producer.close()


def applied_events(pipeline: Pipeline) -> float:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{pipeline.ports['worker-a']}/metrics", timeout=5
    ) as response:
        text = response.read().decode()
    found = re.search(r'^asvat_worker_events_processed_total\{result="applied"\} (\S+)$', text,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_worker_stopped_with_sigterm_writes_its_state_and_its_restart_reads_nothing_again(
    pipeline: Pipeline,
) -> None:
    publish(pipeline, 0, 200)
    pipeline.start("worker-a")
    pipeline.wait_ready("worker-a")
    first = wait_for(lambda: pipeline.readyz("worker-a")["checkpoint"]["last_written"], 60,
                     "the checkpoint written once caught up")
    assert sum(first["offsets"].values()) == 200

    publish(pipeline, 200, 100)  # after the last periodic checkpoint (the next is an hour off)
    wait_for(lambda: applied_events(pipeline) == 300, 60, "the 100 new events applied")
    process = pipeline.processes["worker-a"]
    pipeline.stop("worker-a")  # SIGTERM, as Kubernetes and docker stop send it
    assert process.returncode == 0  # a clean stop, and it leaves without a teardown

    port = pipeline.ports["worker-a"]
    final = CheckpointStore(pipeline.data_dir / "worker" / f"checkpoint-{port}").read()
    assert final is not None
    assert sum(final.offsets.values()) == 300
    assert final.meta["retained_incidents"] == 300
    log = (pipeline.data_dir / "worker-a.log").read_text()
    assert log.count("checkpoint written") == 2, log[-3000:]

    pipeline.start("worker-a")
    pipeline.wait_ready("worker-a")
    restored = pipeline.readyz("worker-a")["checkpoint"]["restored"]
    assert restored is not None and sum(restored["offsets"].values()) == 300
    assert pipeline.readyz("worker-a")["retained_incidents"] == 300
    assert applied_events(pipeline) == 0  # nothing read again


def test_a_worker_stopped_during_a_stream_checkpoints_what_it_published(
    pipeline: Pipeline,
) -> None:
    """SIGTERM while events keep coming (a rollout under load): the worker finishes the
    batch in hand and checkpoints; its restart reads exactly the events after that."""
    publish(pipeline, 0, 200)
    pipeline.start("worker-a")
    pipeline.wait_ready("worker-a")
    wait_for(lambda: pipeline.readyz("worker-a")["checkpoint"]["last_written"], 60,
             "the checkpoint written once caught up")
    total = 200 + 40 * 50
    stream = threading.Thread(target=lambda: [
        (publish(pipeline, 200 + 50 * i, 50), time.sleep(0.05)) for i in range(40)
    ])
    stream.start()
    wait_for(lambda: applied_events(pipeline) >= 600, 60, "the stream under way")
    pipeline.stop("worker-a")
    stream.join()

    port = pipeline.ports["worker-a"]
    final = CheckpointStore(pipeline.data_dir / "worker" / f"checkpoint-{port}").read()
    assert final is not None
    covered = sum(final.offsets.values())
    # Usually well short of the total (the stream goes on for seconds after the stop); on
    # a machine fast enough to apply it all first, the restart must then read nothing.
    assert 600 <= covered <= total, covered
    assert final.meta["retained_incidents"] == covered
    pipeline.start("worker-a")
    pipeline.wait_ready("worker-a")
    wait_for(lambda: pipeline.readyz("worker-a")["retained_incidents"] == total, 60,
             "every event applied")
    assert applied_events(pipeline) == total - covered
