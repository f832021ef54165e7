"""Which partition a key belongs to, as Kafka's default partitioner computes it.

A record goes to partition ``murmur2(UTF-8 key) & 0x7FFFFFFF`` modulo the partition count
(the Java client, kafka-python and aiokafka agree). The worker decides what it owns by the
same function (``services/repeat_detector/ownership.py``), and both publishers place their
records with it (``asvat/record_batches.py``), so it runs for every record they send and
every output the worker decides on.

Why here: kafka-python's ``murmur2`` is pure Python (5-8 µs a key on this project's
machines, about 8 % of the worker's CPU in a replay, whose keys are all new). This one is
compiled with the domain core (``asvat/native.py``): its 64-bit integers (``i64``) hold
every intermediate product exactly (a 32-bit value times the 31-bit constant), and it
takes under 1 µs a key. Interpreted, it runs as fast as kafka-python's.
``tests/unit/test_partitioner.py`` checks it against kafka-python's on random keys.
"""

from __future__ import annotations

from mypy_extensions import i64

#: murmur2's mixing constant, Kafka's seed, and 32 bits.
_M: i64 = 0x5BD1E995
_SEED: i64 = 0x9747B28C
_MASK: i64 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data`` with Kafka's seed (unsigned)."""
    length: i64 = len(data)
    h: i64 = (_SEED ^ length) & _MASK
    end: i64 = length - length % 4
    i: i64 = 0
    k: i64
    while i < end:
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
        i += 4
    extra: i64 = length - end
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return int(h)


def key_hash(key: str) -> int:
    """What Kafka's default partitioner computes of ``key`` (UTF-8) before taking it modulo
    the number of partitions: murmur2, made non-negative."""
    return murmur2(key.encode("utf-8")) & 0x7FFFFFFF
