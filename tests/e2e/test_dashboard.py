"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against the
whole system started by ``asvat up``: sign in with a token, see an escalation arrive live
after incidents are posted, read its reasons, acknowledge it with the keyboard, and find
the acknowledgement in its audit trail. A screenshot is kept in ``test-artifacts/``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

# Every assertion waits on a real API behind a real browser on a shared 2-core machine:
# 5 s (Playwright's default) proved short under load; a wrong page still fails, later.
expect.set_options(timeout=20_000)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run deploy/install-system-deps.sh (apt-get install chromium)",
            pytrace=False,
        )
    data_dir = tmp_path_factory.mktemp("dashboard-data")
    ports = {name: free_port() for name in ("broker", "api", "ingest", "worker")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASVAT_")}
    env.update(
        ASVAT_DATA_DIR=str(data_dir),
        ASVAT_EMBEDDED_BROKER_PORT=str(ports["broker"]),
        ASVAT_API_PORT=str(ports["api"]),
        ASVAT_INGEST_PORT=str(ports["ingest"]),
        ASVAT_WORKER_PORT=str(ports["worker"]),
        PYTHONUNBUFFERED="1",
    )
    output = data_dir.parent / "dashboard-up.txt"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "asvat", "up"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while "Press Ctrl-C to stop" not in output.read_text():
            assert process.poll() is None, f"asvat up exited early:\n{output.read_text()}"
            assert time.monotonic() < deadline, f"asvat up not ready:\n{output.read_text()}"
            time.sleep(0.5)
        admin = re.search(r"Token \(admin[^\n]*\n\s+(asvat_\S+)", output.read_text())
        assert admin, output.read_text()
        made = subprocess.run(
            [sys.executable, "-m", "asvat", "token", "create", "--role", "ingest"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        yield {
            "api": f"http://127.0.0.1:{ports['api']}",
            "ingest": f"http://127.0.0.1:{ports['ingest']}",
            "token": admin.group(1),
            "ingest_token": made.stdout.strip().splitlines()[-1],
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def post_incident(system: dict[str, Any], n: int, day: int) -> None:
    event = {
        "event_id": f"DASH-{n}-0",
        "incident_id": f"DASH-{n}",
        "sequence": 0,
        "event_type": "opened",
        "occurred_at": f"2026-10-{day:02d}T21:15:00Z",
        "reported_at": f"2026-10-{day:02d}T21:40:00Z",
        "source": "101",
        "opening_code": "ASBP",
        "closing_code": None,
        "caller": {"phone": "07412 345678"},
        "location": {"lat": 54.97613, "lon": -1.61185},
        "vulnerability": ["isolation"],
        "description": "Youths banging on the windows again.",
    }
    request = urllib.request.Request(
        f"{system['ingest']}/v1/incidents",
        data=json.dumps(event).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {system['ingest_token']}",
        },
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 202


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),  # fresh for every test
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1600, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def test_an_alert_arrives_live_and_is_acknowledged(system: dict[str, Any], page: Page) -> None:
    page.goto(f"{system['api']}/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Token").fill("asvat_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_contain_text("unknown or revoked")

    page.get_by_label("Token").fill(system["token"])
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_contain_text("asvat up dashboard (admin)")
    expect(page.locator("#connection")).to_have_text("live")
    expect(page.locator("#districts path")).to_have_count(6)  # the force area, drawn locally
    expect(page.locator("li.alert")).to_have_count(0)

    for n, day in enumerate((3, 10, 17)):  # one caller three times in 28 days
        post_incident(system, n, day)

    alert = page.locator("li.alert").first
    expect(alert).to_be_visible(timeout=60_000)  # arrives without a reload
    expect(alert).to_contain_text("Repeat victim")
    expect(alert.locator(".status")).to_have_text("open")
    expect(page.locator("#points circle").first).to_be_attached(timeout=30_000)  # on the map

    head = alert.locator("button.head")
    head.focus()
    page.keyboard.press("Enter")  # keyboard: open the details
    expect(head).to_have_attribute("aria-expanded", "true")
    expect(alert.locator(".reasons")).to_contain_text("victim-28d")
    expect(alert).to_contain_text("DASH-0, DASH-1, DASH-2")
    acknowledge = alert.get_by_role("button", name="Acknowledge")
    acknowledge.focus()
    page.keyboard.press("Enter")
    expect(alert.locator(".status")).to_have_text("acknowledged")
    entry = alert.locator(".audit-entry", has_text="escalation.acknowledge")
    expect(entry).to_contain_text("asvat up dashboard")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def api_call(system: dict[str, Any], path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{system['api']}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {system['token']}"},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.loads(response.read())


def test_a_plan_is_written_submitted_signed_off_and_closed(
    system: dict[str, Any], page: Page
) -> None:
    """A victim's escalation gets a problem-solving plan; the plan page refuses to submit it
    until it is complete, then a supervisor signs it off and closes it with an outcome; the
    scrutiny page shows its charts."""
    for n, day in enumerate((4, 11, 18), start=10):  # a repeat victim (if not there already)
        post_incident(system, n, day)
    deadline = time.monotonic() + 60
    while not (found := api_call(system, "/v1/escalations?subject_type=victim")["items"]):
        assert time.monotonic() < deadline, "no victim escalation arrived"
        time.sleep(0.5)
    plan = api_call(system, "/v1/plans", {"escalation_id": found[0]["escalation_id"]})

    page.goto(f"{system['api']}/dashboard/plans.html?plan={plan['plan_id']}")
    page.get_by_label("Token").fill(system["token"])
    page.keyboard.press("Enter")
    expect(page.locator("#plan-title")).to_contain_text("Plan for the victim")
    expect(page.locator("#scan-incidents tr").first).to_be_visible()
    expect(page.locator("#scan-map svg")).to_be_attached()
    page.get_by_role("button", name="Submit for supervision").click()
    expect(page.locator("#plan-error")).to_contain_text("problem_statement")

    page.get_by_label("Problem statement").fill("Youths bang on one resident's windows nightly.")
    page.get_by_label("Analysis (why it happens)").fill("Gathering spot under a broken light.")
    page.get_by_label("Action").fill("Repair the street light")
    page.get_by_label("Owner").fill("Council lighting team")
    page.get_by_label("Due date").fill("2026-12-01")
    page.get_by_label("Success measure (assessment)").fill("No calls for four weeks.")
    page.get_by_role("button", name="Submit for supervision").click()
    expect(page.locator("#plan-state")).to_contain_text("Status: submitted")
    page.get_by_role("button", name="Sign off").click()
    expect(page.locator("#plan-state")).to_contain_text("Status: signed off")
    page.get_by_role("button", name="Close the plan").click()
    expect(page.locator("#plan-error")).to_contain_text("outcome")
    page.get_by_label("Outcome", exact=True).select_option("reduced")
    page.get_by_label("Evaluation").fill("Light repaired; calls stopped.")
    page.get_by_role("button", name="Close the plan").click()
    expect(page.locator("#plan-state")).to_contain_text("Status: closed")
    expect(page.locator("#before-after")).to_contain_text("Outcome reduced")
    expect(page.locator("#plan-audit")).to_contain_text("plan.close")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "plan.png"), full_page=True)

    page.goto(f"{system['api']}/dashboard/scrutiny.html")
    charts = page.frame_locator("#charts")
    expect(charts.locator("svg")).to_have_count(8, timeout=30_000)
    expect(charts.locator("h1")).to_contain_text("ASB scrutiny")
