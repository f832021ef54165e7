"""A detector restored from a checkpoint goes on exactly as the one that wrote it.

On the shipped Northumbria year (real places and codes, the demo's callers), under the
default policy with ``max_lateness`` cut to 30 days, so that the year passes the
retention and forgotten state is checkpointed too (the shipped 400 days keep everything).
The original detector runs once through the year; at each cut its state is dumped,
loaded into a new detector, and that one applies the next segment. Both
must issue the same escalations, case reviews, integrity findings and results, and the same
assessments, except that a restored detector issues an incident's first reassessment even
where it is unchanged (fingerprints are per process); at the end of the segment their
state, snapshots and final assessments are equal.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from asvat.demo import northumbria_incidents
from asvat.domain import checkpoint
from asvat.domain.checkpoint import CheckpointError, policy_digest
from asvat.domain.detector import Detector, DetectorOutcome
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import Policy, default_policy

KEY = b"k" * 32
CUTS = (0.35, 0.7, 1.0)
DAY = 86_400 * 1_000_000


@cache
def forgetting_policy() -> Policy:
    return replace(default_policy(), max_lateness=30 * DAY)


def victim_keyed(raw: dict[str, Any]) -> dict[str, Any]:
    """The raw event with a victim key in place of its caller (a stand-in for ingest's
    keyed hash, which is not what this test is about and takes most of its time)."""
    wire = {k: v for k, v in raw.items() if k != "caller"}
    if raw.get("caller"):
        caller = json.dumps(raw["caller"], sort_keys=True).encode()
        wire["victim_key"] = hashlib.sha256(KEY + caller).hexdigest()
    return wire


@cache
def year() -> tuple[IncidentEvent, ...]:
    events = [IncidentEvent.from_wire(victim_keyed(e)) for e in northumbria_incidents(seed=11)]
    events.sort(key=lambda e: e.reported_at)
    return tuple(events)


def outputs(outcome: DetectorOutcome) -> tuple[object, ...]:
    return (
        outcome.escalations,
        outcome.case_reviews,
        outcome.integrity,
        outcome.not_applied,
        outcome.duplicate,
        outcome.superseded,
    )


def everything(detector: Detector) -> DetectorOutcome:
    return detector.snapshot(lambda _: True, lambda _: True)


def test_a_restored_detector_goes_on_as_the_original() -> None:
    policy = forgetting_policy()
    events = year()
    original = Detector(policy)
    start = 0
    closed = False
    for cut in CUTS:
        end = int(len(events) * cut)
        blob = checkpoint.dump(original)
        restored = checkpoint.load(blob, policy)
        assert restored.export_state() == original.export_state()
        extra = 0
        for event in events[start:end]:
            before = original.apply(event)
            after = restored.apply(event)
            assert outputs(after) == outputs(before), event.incident_id
            issued = {a.incident_id: a for a in after.assessments}
            for assessment in before.assessments:
                assert issued.pop(assessment.incident_id) == assessment
            # Re-issued, unchanged: what the original would say of that incident now.
            for incident_id, assessment in issued.items():
                assert assessment == original.assessment(incident_id)
            extra += len(issued)
        if not closed:  # a person's close, so that closed state is checkpointed too
            subject = next(iter(original.lifecycle.open_escalations()))
            for detector in (original, restored):
                detector.close(subject.escalation_id, subject.subject_type,
                               subject.subject_key, at=events[end - 1].reported_at)
            closed = True
        assert restored.export_state() == original.export_state()
        assert outputs(everything(restored)) == outputs(everything(original))
        assert restored.final_assessments() == original.final_assessments()
        assert restored.state_counts() == original.state_counts()
        assert extra < (end - start) // 2  # re-issues are a minority, not every incident
        start = end
    # The year went past the retention: the checkpoints held forgotten state as well.
    assert original.engine.forgotten_before is not None


def test_restored_strings_are_shared_as_decoded_ones_are() -> None:
    detector = Detector(default_policy())
    for event in year()[:2000]:
        detector.apply(event)
    restored = checkpoint.load(checkpoint.dump(detector), default_policy())
    events = list(restored.engine.current_events())
    keys = [e.victim_key for e in events if e.victim_key]
    assert keys and all(sys.intern(k) is k for k in keys)
    assert all(sys.intern(e.opening_code) is e.opening_code for e in events)


def test_a_checkpoint_of_another_policy_is_refused() -> None:
    policy = default_policy()
    detector = Detector(policy)
    for event in year()[:500]:
        detector.apply(event)
    blob = checkpoint.dump(detector)
    other = replace(policy, max_lateness=policy.max_lateness + 1)
    with pytest.raises(CheckpointError, match="policy"):
        checkpoint.load(blob, other)
    with pytest.raises(CheckpointError, match="forget"):
        checkpoint.load(blob, policy, forget=False)


def test_a_damaged_checkpoint_is_refused_with_a_reason() -> None:
    detector = Detector(default_policy())
    for event in year()[:500]:
        detector.apply(event)
    blob = checkpoint.dump(detector)
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(blob[: len(blob) // 2], default_policy())
    wrong = pickle.dumps({"format": checkpoint.FORMAT + 1})
    with pytest.raises(CheckpointError, match="format"):
        checkpoint.load(wrong, default_policy())


def test_a_checkpoint_cannot_name_code_outside_the_domain(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return os.system, (f"touch {marker}",)

    with pytest.raises(CheckpointError, match="may not name"):
        checkpoint.load(pickle.dumps({"format": 1, "x": Evil()}), default_policy())
    assert not marker.exists()


def test_a_policy_object_in_the_state_is_an_error_not_a_copy() -> None:
    out = io.BytesIO()
    with pytest.raises(pickle.PicklingError, match="policy object"):
        checkpoint._Pickler(out).dump({"rule": default_policy().rules[0]})


def test_the_policy_digest_is_the_same_in_every_process() -> None:
    code = (
        "from asvat.domain.checkpoint import policy_digest;"
        "from asvat.domain.policy import default_policy;"
        "print(policy_digest(default_policy()))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert digests == {policy_digest(default_policy())}
    changed = replace(default_policy(), max_lateness=default_policy().max_lateness * 2)
    assert policy_digest(changed) != policy_digest(default_policy())
