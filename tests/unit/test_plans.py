"""Problem-solving plans (SARA): completeness before submission, the state machine and
who may move it, and the before-and-after counts over equal periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asvat.domain.plans import (
    MapPoint,
    PlanRefused,
    attention,
    before_after,
    map_extract_svg,
    missing_fields,
    transition,
)

COMPLETE: dict[str, Any] = {
    "problem_statement": "Youths gather at the bus stop nightly and throw stones at buses.",
    "analysis": "Peaks Friday 21:00-23:00; no lighting; shelter glass broken.",
    "responses": [{"action": "Fix the lighting", "owner": "Council", "due_date": "2026-12-01"}],
    "success_measure": "Half as many incidents in the next three months.",
}


def test_an_empty_plan_lacks_every_field() -> None:
    assert missing_fields({}) == [
        "problem_statement",
        "analysis",
        "responses",
        "success_measure",
    ]


def test_a_complete_plan_lacks_nothing() -> None:
    assert missing_fields(COMPLETE) == []


@pytest.mark.parametrize(
    ("response", "missing"),
    [
        ({"action": "Patrol", "owner": "", "due_date": "2026-12-01"}, ["responses[0].owner"]),
        ({"action": "Patrol", "owner": "PC 123"}, ["responses[0].due_date"]),
        (
            {"action": "Patrol", "owner": "PC 123", "due_date": "next week"},
            ["responses[0].due_date"],
        ),
        ({"owner": "PC 123", "due_date": "2026-12-01"}, ["responses[0].action"]),
    ],
)
def test_each_response_needs_an_action_an_owner_and_a_date(
    response: dict[str, Any], missing: list[str]
) -> None:
    assert missing_fields(COMPLETE | {"responses": [response]}) == missing


def test_blank_text_does_not_count() -> None:
    assert missing_fields(COMPLETE | {"analysis": "   ", "success_measure": None}) == [
        "analysis",
        "success_measure",
    ]


def test_submitting_an_incomplete_plan_is_refused_naming_the_fields() -> None:
    with pytest.raises(PlanRefused) as refused:
        transition("draft", "submit", role="operator", plan={"analysis": "why"})
    assert refused.value.kind == "incomplete"
    assert refused.value.missing == ["problem_statement", "responses", "success_measure"]
    assert "problem_statement" in str(refused.value)


def test_the_whole_path_draft_to_closed() -> None:
    status = transition("draft", "submit", role="operator", plan=COMPLETE)
    assert status == "submitted"
    status = transition(status, "sign_off", role="supervisor", plan=COMPLETE)
    assert status == "signed_off"
    assert transition(status, "sign_off", role="supervisor", plan=COMPLETE) == "signed_off"
    closed = transition(
        status, "close", role="supervisor", plan=COMPLETE, outcome="reduced", evaluation="ok"
    )
    assert closed == "closed"


@pytest.mark.parametrize("role", ["viewer", "operator", "ingest"])
def test_only_a_supervisor_signs_off(role: str) -> None:
    with pytest.raises(PlanRefused) as refused:
        transition("submitted", "sign_off", role=role, plan=COMPLETE)
    assert refused.value.kind == "forbidden"
    assert transition("submitted", "sign_off", role="admin", plan=COMPLETE) == "signed_off"


@pytest.mark.parametrize(
    ("outcome", "evaluation", "missing"),
    [
        (None, "it worked", ["outcome"]),
        ("fixed", "it worked", ["outcome"]),
        ("resolved", None, ["evaluation"]),
        ("resolved", "  ", ["evaluation"]),
        (None, None, ["outcome", "evaluation"]),
    ],
)
def test_no_closing_without_an_outcome_and_evaluation(
    outcome: str | None, evaluation: str | None, missing: list[str]
) -> None:
    with pytest.raises(PlanRefused) as refused:
        transition(
            "signed_off",
            "close",
            role="supervisor",
            plan=COMPLETE,
            outcome=outcome,
            evaluation=evaluation,
        )
    assert refused.value.kind == "incomplete"
    assert refused.value.missing == missing


@pytest.mark.parametrize(
    ("status", "action", "role"),
    [
        ("draft", "sign_off", "supervisor"),  # not supervised before it is submitted
        ("draft", "close", "supervisor"),
        ("submitted", "close", "supervisor"),  # not closed before sign-off
        ("submitted", "submit", "operator"),
        ("closed", "update", "operator"),
        ("closed", "sign_off", "supervisor"),
    ],
)
def test_actions_out_of_order_are_conflicts(status: str, action: Any, role: str) -> None:
    with pytest.raises(PlanRefused) as refused:
        transition(status, action, role=role, plan=COMPLETE, outcome="resolved", evaluation="x")
    assert refused.value.kind == "conflict"


def test_a_supervisor_can_return_a_submitted_plan_but_an_operator_cannot() -> None:
    assert transition("submitted", "return", role="supervisor", plan=COMPLETE) == "draft"
    with pytest.raises(PlanRefused):
        transition("submitted", "return", role="operator", plan=COMPLETE)


OPENED = datetime(2026, 3, 1, tzinfo=UTC)
CLOSED = OPENED + timedelta(days=30)


def test_before_and_after_count_equal_periods() -> None:
    times = [
        OPENED - timedelta(days=31),  # before the before period: ignored
        OPENED - timedelta(days=30),  # first instant of the before period
        OPENED - timedelta(days=10),
        OPENED - timedelta(seconds=1),
        OPENED,  # first instant of the open period
        OPENED + timedelta(days=29),
        CLOSED,  # after closing: ignored
    ]
    counts = before_after(times, opened_at=OPENED, closed_at=CLOSED)
    assert (counts.before, counts.after, counts.change) == (3, 2, -1)
    assert counts.before_start == OPENED - timedelta(days=30)
    assert counts.content()["period_days"] == 30.0


def test_a_plan_cannot_close_before_it_opened() -> None:
    with pytest.raises(ValueError, match="before it opened"):
        before_after([], opened_at=CLOSED, closed_at=OPENED)


def test_attention_reasons() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert attention({"status": "draft"}, now=now) == ["missing_detail"]
    assert attention({"status": "draft", **COMPLETE}, now=now) == []
    assert attention({"status": "submitted", **COMPLETE}, now=now) == ["awaiting_supervision"]
    late = {"status": "signed_off", "review_due_at": now - timedelta(days=1)}
    assert attention(late, now=now) == ["overdue_for_evaluation"]
    assert attention({"status": "signed_off", "evaluation_due": "2026-05-31"}, now=now) == [
        "overdue_for_evaluation"
    ]
    assert attention({"status": "signed_off", "evaluation_due": "2026-06-01"}, now=now) == []


def test_the_map_extract_draws_each_point_and_the_radius() -> None:
    points = [MapPoint(424560 + i * 10, 564921, f"T-{i}") for i in range(3)]
    drawing = map_extract_svg(points, centre=(424560.0, 564921.0), radius_m=100)
    assert drawing.startswith("<svg") and drawing.endswith("</svg>")
    assert drawing.count("<title>") == 3 and "T-2" in drawing
    assert 'stroke-dasharray="4 3"' in drawing  # the radius ring
    assert "http" not in drawing.replace("http://www.w3.org/2000/svg", "")  # no tiles


def test_a_submitted_plan_cannot_be_edited_back_into_incompleteness() -> None:
    assert transition("submitted", "update", role="operator", plan=COMPLETE) == "submitted"
    with pytest.raises(PlanRefused) as refused:
        transition("signed_off", "update", role="operator", plan=COMPLETE | {"analysis": ""})
    assert refused.value.kind == "incomplete" and refused.value.missing == ["analysis"]
    assert transition("draft", "update", role="operator", plan={}) == "draft"
