"""Publishing ownership, snapshots and readiness: the pure parts of the scaled-out worker.

Two workers each hold the whole state and publish the outputs of the partitions they own.
These tests check what makes that correct: ownership splits every output to exactly one
worker; a snapshot of the owned part, added to what the other owner published, gives every
current output; reviews are announced (and marked announced) only by their owner; and
readiness fails on a stall, not only on a dead process.
"""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from asvat.domain.detector import Detector
from asvat.domain.policy import default_policy
from asvat.record_batches import partition_of
from services.repeat_detector.health import Progress, verdict
from services.repeat_detector.ownership import Ownership
from tests.unit.test_detector import DAY, event


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    """Ownership of an incident is the partition its events are sent to (aiokafka, an
    independent implementation of the same Java-compatible murmur2, agrees)."""
    partitions = list(range(4))
    for n in range(200):
        key = f"INC-{n:05d}"
        expected = DefaultPartitioner()(key.encode(), partitions, partitions)
        assert partition_of(key, 4) == expected


def test_two_owners_split_every_key_exactly_once() -> None:
    keys = [f"key-{n}" for n in range(1000)]
    first, second = Ownership(4, {0, 3}), Ownership(4, {1, 2})
    for key in keys:
        assert first.owns(key) != second.owns(key)
    assert 300 < sum(first.owns(k) for k in keys) < 700


def _repeat_history() -> list:
    """Victims with three and four reports (escalations), spread over several incidents."""
    events = []
    rng = random.Random(7)
    for n in range(40):
        victim = f"{n % 6:064x}"
        events.append(event(n, day=rng.uniform(0, 20), victim=victim, x=rng.uniform(0, 500)))
    return events


def test_snapshots_of_two_owners_cover_every_current_output_once() -> None:
    detector = Detector(default_policy(), forget=False)
    published = {"assessments": [], "escalations": []}
    for e in _repeat_history():
        outcome = detector.apply(e)
        published["assessments"] += [a.incident_id for a in outcome.assessments]
        published["escalations"] += [x.event_id for x in outcome.escalations]
    first, second = Ownership(4, {0, 1}), Ownership(4, {2, 3})
    one = detector.snapshot(first.owns, first.owns)
    two = detector.snapshot(second.owns, second.owns)
    ids = [a.incident_id for a in one.assessments + two.assessments]
    assert sorted(ids) == sorted(set(ids)) == sorted(detector.final_assessments())
    current = {i: a.assessment_id for i, a in detector.final_assessments().items()}
    assert {a.incident_id: a.assessment_id for a in one.assessments + two.assessments} == current
    escalations = [x.event_id for x in one.escalations + two.escalations]
    assert len(escalations) == len(set(escalations)) > 0
    # Every escalation event in a snapshot is one the detector issued (same id), and every
    # open escalation's raise is in it.
    assert set(escalations) <= set(published["escalations"])
    raised = {x.escalation_id for x in one.escalations + two.escalations if x.event == "raised"}
    assert raised == {o.escalation_id for o in detector.lifecycle.open_escalations()}


def test_snapshot_of_a_forgetting_detector_leaves_settled_incidents_out() -> None:
    detector = Detector(default_policy())
    detector.apply(event(1, day=0))
    detector.apply(event(2, day=500))  # the first is now beyond max_lateness (400 d)
    everyone = Ownership(1, {0})
    snapshot = detector.snapshot(everyone.owns, everyone.owns)
    assert [a.incident_id for a in snapshot.assessments] == ["I2"]


def test_reviews_are_announced_and_marked_only_for_owned_subjects() -> None:
    detector = Detector(default_policy(), forget=False)
    for e in _repeat_history():
        detector.apply(e)
    subjects = {o.subject_key for o in detector.lifecycle.open_escalations()}
    assert len(subjects) >= 2
    first, second = Ownership(2, {0}), Ownership(2, {1})
    later = event(0, day=400).occurred_at
    mine = detector.reviews_due(later, first.owns)
    assert mine and all(first.owns(r.subject_key) for r in mine)
    # The other owner still gets its own: announcing for one owner marked nothing of it.
    theirs = detector.reviews_due(later, second.owns)
    assert theirs and all(second.owns(r.subject_key) for r in theirs)
    assert detector.reviews_due(later) == []  # each announced once, by its owner


def _progress(**changes: object) -> Progress:
    fields: dict[str, object] = {
        "caught_up": True,
        "owned_partitions": 2,
        "snapshot_in_flight": False,
        "replica_lag": 0,
        "seconds_since_progress": 500.0,
        "commit_lag": 0,
        "seconds_since_commit": 500.0,
    }
    fields.update(changes)
    return Progress(**fields)  # type: ignore[arg-type]


def test_ready_when_idle_with_nothing_waiting() -> None:
    assert verdict(_progress(), stall_after=60) == []


def test_not_ready_while_rebuilding_or_without_partitions() -> None:
    assert "rebuilding" in verdict(_progress(caught_up=False), 60)[0]
    assert "no partitions" in verdict(_progress(owned_partitions=0), 60)[0]


def test_not_ready_until_the_snapshot_of_partitions_taken_over_is_published() -> None:
    assert "publishing the snapshot" in verdict(_progress(snapshot_in_flight=True), 60)[0]


def test_not_ready_when_work_waits_and_nothing_moves() -> None:
    stalled = verdict(_progress(replica_lag=10, seconds_since_progress=61), 60)
    assert stalled and "10 messages waiting" in stalled[0]
    assert verdict(_progress(replica_lag=10, seconds_since_progress=5), 60) == []


def test_not_ready_when_commits_stop_while_published_work_waits() -> None:
    stalled = verdict(_progress(commit_lag=3, seconds_since_commit=90), 60)
    assert stalled and "commits stalled" in stalled[0]
    assert verdict(_progress(commit_lag=3, seconds_since_commit=2), 60) == []


def test_days_constant_is_a_day() -> None:
    assert DAY == 86_400 * 1_000_000
