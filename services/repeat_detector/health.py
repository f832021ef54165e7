"""Is the worker making progress? The rules behind ``/readyz``, kept pure for tests.

A worker process can be alive and useless: faust's consumer is known to stall after
rebalances and recoveries (ENGINEERING.md), a broker can stop answering, a bug can wedge
the loop. Readiness therefore asks for *progress*, not for a process:

* the replica has read ``asvat.incidents.v1`` to its end since the last start or broker
  reset (before that, what it would publish is not yet true);
* the consumer group has given it partitions (else it publishes nothing), and it has
  published the snapshot of those it took over (a national year's is 276,000 records,
  seconds of sending, and new events wait behind it);
* when messages are waiting for the replica, it applied some within ``stall_after``;
* when published work is waiting to be committed by the group, a commit advanced within
  ``stall_after`` (faust's consumer stall shows here: the replica goes on, commits stop).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Progress:
    """What the worker knows about its own progress, at one moment."""

    caught_up: bool
    owned_partitions: int
    snapshot_in_flight: bool  # publishing the snapshot of partitions it took over
    replica_lag: int  # messages waiting for the replica, all partitions
    seconds_since_progress: float  # since the replica last applied or published something
    commit_lag: int  # applied but not committed by the group, owned partitions
    seconds_since_commit: float  # since a commit last advanced (or the assignment)


def verdict(progress: Progress, stall_after: float) -> list[str]:
    """Why the worker is not ready; an empty list means it is."""
    reasons = []
    if not progress.caught_up:
        reasons.append("rebuilding: the replica has not yet read asvat.incidents.v1 to its end")
    if progress.owned_partitions == 0:
        reasons.append("no partitions assigned by the consumer group")
    if progress.snapshot_in_flight:
        reasons.append("publishing the snapshot of the partitions it took over")
    if progress.replica_lag > 0 and progress.seconds_since_progress > stall_after:
        reasons.append(
            f"stalled: {progress.replica_lag} messages waiting and nothing applied for "
            f"{progress.seconds_since_progress:.0f} s"
        )
    if progress.commit_lag > 0 and progress.seconds_since_commit > stall_after:
        reasons.append(
            f"commits stalled: {progress.commit_lag} published messages not committed and no "
            f"commit for {progress.seconds_since_commit:.0f} s"
        )
    return reasons
