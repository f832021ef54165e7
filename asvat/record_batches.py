"""Records to Kafka as record batches, each on the partition ``producer.send`` would choose.

Both publishers use it: the worker's outputs (``services/repeat_detector/replica.py``) and
ingest's accepted events (``services/ingest/publisher.py``). One ``producer.send`` per
record costs a coroutine, a metadata look-up, the partitioner and a future each; here the
records are grouped per topic partition and each group goes as one or more aiokafka record
batches, in order.

A record goes to the partition Kafka's default partitioner gives its key (murmur2 of the
UTF-8 key, as the Java client, kafka-python and aiokafka compute it: ``key_hash``, from
``asvat.domain.partitioner``, compiled with the domain core), so consumers that key their
work by partition (the worker's ownership) see what ``send`` would have given them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from asvat.domain.partitioner import key_hash

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer
    from aiokafka.producer.message_accumulator import BatchBuilder

Record = tuple[str, str, bytes]  # (topic, key, value); the key is sent UTF-8 encoded


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (UTF-8) among ``partitions``."""
    return key_hash(key) % partitions


def sort_by_partition(
    records: Iterable[Record], hash_of: Callable[[str], int], partitions: dict[str, list[int]]
) -> dict[tuple[str, int], list[Record]]:
    """The records per (topic, partition), each list in the records' order: ``sorted
    partitions[hash_of(key) % len(partitions)]``, ``hash_of`` being :func:`key_hash` (or a
    memo of it); ``partitions``: every topic's partition ids, sorted."""
    grouped: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        topic, key, _value = record
        ids = partitions[topic]
        tp = (topic, ids[hash_of(key) % len(ids)])
        found = grouped.get(tp)
        if found is None:
            grouped[tp] = [record]
        else:
            found.append(record)
    return grouped


async def send_batches(
    producer: AIOKafkaProducer,
    records: Iterable[Record],
    hash_of: Callable[[str], int] = key_hash,
) -> None:
    """Send ``records`` and return once the broker acknowledged every one (with the
    producer's ``acks``); the first failure is raised.

    Only one batch per partition is queued at a time (aiokafka waits for the previous one
    to be drained into a request) and a partition has at most one request in flight, so a
    partition's records reach the broker in order.
    """
    records = list(records)
    partitions: dict[str, list[int]] = {}
    for topic in {record[0] for record in records}:
        partitions[topic] = sorted(await producer.partitions_for(topic))
    batches: dict[tuple[str, int], list[BatchBuilder]] = {}
    for tp, group in sort_by_partition(records, hash_of, partitions).items():
        builder = producer.create_batch()
        batches[tp] = [builder]
        for _topic, key, value in group:
            if builder.append(key=key.encode(), value=value, timestamp=None) is None:
                builder = producer.create_batch()  # full (max_batch_size): start another
                batches[tp].append(builder)
                builder.append(key=key.encode(), value=value, timestamp=None)
    futures = []
    # Every partition's first batch, then every second one, …: sending a partition's
    # next batch waits until its previous one is on its way.
    for n in range(max(map(len, batches.values()), default=0)):
        for (topic, partition), built in batches.items():
            if n < len(built):
                built[n].close()  # complete: no lingering for more records
                futures.append(await producer.send_batch(built[n], topic, partition=partition))
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
