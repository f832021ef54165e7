"""Answers kept by data version: made once, and while a new one is being made, the
previous one is served (for a moment) instead of making everyone wait."""

from __future__ import annotations

import threading
import time

from services.api.pages import PageCache


def test_an_answer_is_made_once_per_version() -> None:
    cache = PageCache(stale_s=0.0)
    made: list[int] = []

    def make(version: int) -> bytes:
        made.append(version)
        return f"v{version}".encode()

    assert cache.get_or_make("list", 1, lambda: make(1)) == b"v1"
    assert cache.get_or_make("list", 1, lambda: make(1)) == b"v1"
    assert cache.get_or_make("list", 2, lambda: make(2)) == b"v2"  # no stale: the new one
    assert made == [1, 2]


def test_concurrent_requests_wait_for_one_maker() -> None:
    cache = PageCache(stale_s=0.0)
    calls = 0
    gate = threading.Event()

    def make() -> bytes:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return b"page"

    answers: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: answers.append(cache.get_or_make("q", 7, make)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert answers == [b"page"] * 8 and calls == 1


def test_after_a_change_the_previous_answer_is_served_while_the_new_one_is_made() -> None:
    cache = PageCache(stale_s=1.0)
    assert cache.get_or_make("list", 1, lambda: b"v1") == b"v1"
    slow = threading.Event()

    def make_v2() -> bytes:
        slow.wait(5)
        return b"v2"

    started = time.monotonic()
    assert cache.get_or_make("list", 2, make_v2) == b"v1"  # at once, not after make_v2
    assert time.monotonic() - started < 0.5
    slow.set()
    deadline = time.monotonic() + 5
    while cache.get(("list", 2)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get_or_make("list", 2, lambda: b"unused") == b"v2"
    time.sleep(1.1)  # too old to stand in: a later version is made on the request path
    assert cache.get_or_make("list", 3, lambda: b"v3") == b"v3"
