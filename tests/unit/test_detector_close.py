"""A person closes an escalation: the worker's lifecycle follows, in any reading order.

Without it a closed victim stayed "open" in the worker, so new repeats never raised a new
escalation. The close is a command on a topic that every worker reads beside the incidents;
a worker rebuilding may read it before or after the incidents, so the outcome must not
depend on that order.
"""

from __future__ import annotations

import itertools
import random

from asvat.domain.assessment import content_id
from asvat.domain.detector import Detector
from asvat.domain.policy import default_policy
from tests.unit.test_detector import DAY, T0, event

VICTIM = "b" * 64
FIRST = content_id("escalation", "victim", VICTIM, "1")
SECOND = content_id("escalation", "victim", VICTIM, "2")
CLOSED_AT = T0 + 3 * DAY


def history() -> list:
    return [event(n, day=d, victim=VICTIM, x=n * 1000.0) for n, d in enumerate((0, 1, 2, 4))]


def run(items: list) -> tuple[set[str], str | None]:
    """Apply events and the close in the given order; (escalation ids raised, open id)."""
    detector = Detector(default_policy(), forget=False)
    raised: set[str] = set()
    for item in items:
        if item == "close":
            outcome = detector.close(FIRST, "victim", VICTIM, at=CLOSED_AT)
        else:
            outcome = detector.apply(item)
        raised |= {e.escalation_id for e in outcome.escalations if e.event == "raised"}
    current = detector.lifecycle.current("victim", VICTIM)
    return raised, None if current is None else current.escalation_id


def test_after_a_close_a_later_incident_raises_the_next_episode() -> None:
    events = history()
    raised, open_now = run([*events[:3], "close", events[3]])
    assert raised == {FIRST, SECOND}
    assert open_now == SECOND


def test_a_close_without_later_incidents_leaves_the_subject_closed() -> None:
    raised, open_now = run([*history()[:3], "close"])
    assert raised == {FIRST}
    assert open_now is None


def test_an_incident_before_the_close_read_after_it_raises_nothing_new() -> None:
    events = history()
    late_but_earlier = event(9, day=2.5, victim=VICTIM, x=9000.0)
    raised, open_now = run([*events[:3], "close", late_but_earlier])
    assert raised == {FIRST}
    assert open_now is None


def test_the_outcome_does_not_depend_on_the_reading_order() -> None:
    items = [*history(), "close"]
    expected = run([*history()[:3], "close", history()[3]])
    for order in itertools.permutations(items):
        assert run(list(order)) == expected, order


def test_a_repeated_close_is_ignored_and_a_close_of_another_episode_waits() -> None:
    detector = Detector(default_policy(), forget=False)
    for e in history()[:3]:
        detector.apply(e)
    # Episode 2 is closed after its incident (day 4), before it was raised here.
    assert detector.close(SECOND, "victim", VICTIM, at=T0 + 5 * DAY).escalations == []
    assert detector.lifecycle.current("victim", VICTIM) is not None  # E1 still open
    detector.close(FIRST, "victim", VICTIM, at=CLOSED_AT)
    again = detector.close(FIRST, "victim", VICTIM, at=CLOSED_AT)
    assert again.escalations == []
    # The later incident raises the second episode, which the waiting close then closes.
    raised = detector.apply(history()[3]).escalations
    assert [e.escalation_id for e in raised if e.event == "raised"] == [SECOND]
    assert detector.lifecycle.current("victim", VICTIM) is None


def test_random_histories_agree_in_every_order() -> None:
    rng = random.Random(3)
    for _ in range(8):
        days = sorted(rng.uniform(0, 10) for _ in range(6))
        events = [event(n, day=d, victim=VICTIM, x=n * 1000.0) for n, d in enumerate(days)]
        items = [*events, "close"]
        results = set()
        for _ in range(15):
            rng.shuffle(items)
            raised, open_now = run(list(items))
            results.add((frozenset(raised), open_now))
        assert len(results) == 1, results
