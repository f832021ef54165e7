"""Which worker publishes what: the partitions a worker owns, applied to output keys.

Every worker holds a replica of the whole detection state (see ``replica.py``); the
consumer group only decides *who publishes*. An output belongs to the partition its key
would be sent to by Kafka's default partitioner (murmur2 of the key, as the Java client and
kafka-python compute it), so:

* an incident's assessment, integrity finding and late notice belong to the partition of
  its ``incident_id`` — the partition its events arrive on, since ingest keys them so;
* a subject's escalations, reviews and case reviews belong to the partition of its
  ``subject_key`` (a victim key or a location key).

A worker publishes an output when it owns that partition of ``asvat.incidents.v1``; the
replica also sends each output to that partition of its own topic itself
(:mod:`asvat.record_batches`, with :meth:`Ownership.key_hash`, so each key is hashed once).
Pure: no Kafka here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from asvat.domain.partitioner import key_hash


class Ownership:
    """The partitions this worker owns, as predicates on output keys."""

    def __init__(self, partitions: int, owned: Iterable[int] = ()) -> None:
        if partitions < 1:
            raise ValueError(f"expected at least 1 partition, got {partitions}")
        self.partitions = partitions
        self.owned: frozenset[int] = frozenset(owned)
        self._cache: dict[str, int] = {}

    def key_hash(self, key: str) -> int:
        """:func:`key_hash`, remembered: the same keys are asked about to decide ownership
        and again to publish (compiled, a key's murmur2 takes under 1 µs; interpreted,
        5-25 µs)."""
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            found = self._cache[key] = key_hash(key)
        return found

    def partition(self, key: str) -> int:
        return self.key_hash(key) % self.partitions

    def owns(self, key: str) -> bool:
        return self.partition(key) in self.owned

    def within(self, partitions: Iterable[int]) -> Callable[[str], bool]:
        """A predicate for keys that belong to ``partitions`` (for a partial snapshot)."""
        chosen = frozenset(partitions)
        return lambda key: self.partition(key) in chosen
