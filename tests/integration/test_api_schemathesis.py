"""The API against its own OpenAPI document, with generated requests (schemathesis): no
request, valid or not, may get a 5xx, an undocumented status code or content type, or a
body that breaks the documented schema. Bounded: a few dozen examples per operation on a
seeded SQLite database, well under a minute.

The live stream (``/v1/alerts/stream``) is left out: it never ends by design; the alerts
tests cover it. So is ``/readyz``, which answers 503 here on purpose (no broker runs).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_fixtures import NO_BROKER, example, sha256
from conftest import issue_tokens, make_settings
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from services.api import service
from services.api.app import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
TOKENS: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_schema() -> Iterator[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'api.db'}"
        TOKENS.update(issue_tokens(url, ["admin"], "schemathesis"))  # migrates the database
        app = create_app(
            make_settings(Path(tmp), database_url=url, kafka_bootstrap=NO_BROKER),
            start_consumer=False,
        )
        with app.state.api.writer_factory.begin() as session:
            assessments = [
                example("assessment.v1/location-and-case-review.json"),
                example("assessment.v1/victim-repeat.json"),
                example("assessment.v1/cancelled-anonymous.json"),
            ]
            service.upsert_assessments(session=session, payloads=assessments)
            escalation = example("escalation.v1/victim-28d.json")
            service.record_escalations(
                session=session,
                payloads=[
                    escalation,
                    example("escalation.v1/location-7d-100m.json"),
                    escalation
                    | {
                        "escalation_id": sha256("leveled"),
                        "level": "high",
                        "risk_score": 30,
                        "reasons": [{"factor": "rule", "weight": 10, "detail": "met"}],
                    },
                ],
            )
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        # /readyz answers 503 here by design (no broker): its 5xx is the point of it.
        yield schema.exclude(path="/v1/alerts/stream").exclude(path="/readyz")
        app.state.api.engine.dispose()


def test_no_server_errors_and_responses_match_the_document(api_schema: Any) -> None:
    # Operation by operation with Hypothesis directly (schemathesis' pytest plugin does not
    # run on this pytest); every operation is tried, and all failures are reported.
    headers = {"Authorization": f"Bearer {TOKENS['admin']}"}
    failures: list[str] = []
    tried = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        tried += 1

        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # each failure names the operation and what was wrong
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:3000])
    assert tried >= 20
    assert not failures, "\n\n".join(failures)
