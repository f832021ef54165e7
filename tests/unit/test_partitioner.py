"""The compiled murmur2 places every key where Kafka's default partitioner does.

Checked against kafka-python's own ``murmur2`` (pure Python, the reference the Java client
agrees with) on keys of every length the loop and its tail handle, random bytes and the
kinds of key the worker publishes under: incident ids, victim keys, location keys.
"""

from __future__ import annotations

import random

from kafka.partitioner.default import murmur2 as kafka_murmur2

from asvat import native
from asvat.domain.partitioner import key_hash, murmur2


def test_murmur2_equals_kafka_pythons_on_random_bytes_of_every_length() -> None:
    rng = random.Random(20261127)
    for length in range(0, 130):
        for _ in range(40):
            data = rng.randbytes(length)
            assert murmur2(data) == kafka_murmur2(data) & 0xFFFFFFFF, data


def test_key_hash_equals_the_partitioners_on_the_keys_the_worker_publishes() -> None:
    rng = random.Random(7)
    keys = [f"NB-{n}" for n in range(5000)]
    keys += [f"{rng.getrandbits(256):064x}" for _ in range(2000)]  # victim keys
    keys += [f"uprn:{rng.randrange(10**12)}" for _ in range(1000)]
    keys += [f"grid:{rng.randrange(-9999, 9999)}:{rng.randrange(99999)}" for _ in range(1000)]
    keys += ["", "é", "事件-１", "\U0001f6a8 alert"]
    for key in keys:
        expected = kafka_murmur2(key.encode("utf-8")) & 0x7FFFFFFF
        assert key_hash(key) == expected, key
        assert 0 <= key_hash(key) < 2**31


def test_the_compiled_module_is_the_one_in_use_when_the_core_is_compiled() -> None:
    # The speed is the point of compiling it: with the core compiled, so is this.
    import asvat.domain.partitioner as module

    compiled = not str(module.__file__).endswith(".py")
    assert compiled == native.status().compiled, (module.__file__, native.status())
