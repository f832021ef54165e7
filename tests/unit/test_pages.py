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


def test_an_answer_served_at_its_version_stays_fit_to_stand_in() -> None:
    # Served at the version the caller just read, an answer is known to be current then:
    # a change a while after it was *made* still gets it at once, not a wait.
    cache = PageCache(stale_s=0.3)
    assert cache.get_or_make("list", 1, lambda: b"v1") == b"v1"
    for _ in range(6):  # 0.6 s of requests at version 1, each confirming it
        time.sleep(0.1)
        assert cache.get_or_make("list", 1, lambda: b"unused") == b"v1"
    slow = threading.Event()

    def make_v2() -> bytes:
        slow.wait(5)
        return b"v2"

    started = time.monotonic()
    assert cache.get_or_make("list", 2, make_v2) == b"v1"
    assert time.monotonic() - started < 0.2
    slow.set()
    time.sleep(0.4)  # not served since: too old to stand in for version 3
    assert cache.get_or_make("list", 3, lambda: b"v3") == b"v3"


def test_a_version_is_read_once_per_interval_and_never_kept_without_staleness() -> None:
    cache = PageCache(stale_s=1.0, version_s=0.2)
    reads: list[int] = []

    def read() -> int:
        reads.append(len(reads) + 1)
        return len(reads)

    assert cache.version("feed", read) == 1
    assert cache.known_version("feed") == 1
    assert cache.version("feed", read) == 1  # within version_s: not read again
    time.sleep(0.25)
    assert cache.known_version("feed") is None
    assert cache.version("feed", read) == 2
    assert reads == [1, 2]
    exact = PageCache(stale_s=0.0, version_s=0.2)  # the tests' setting: always read
    assert exact.version("feed", read) == 3
    assert exact.known_version("feed") is None
    assert exact.version("feed", read) == 4


def test_while_one_request_reads_the_version_the_others_use_the_last_one() -> None:
    cache = PageCache(stale_s=1.0, version_s=0.05)
    assert cache.version("counts", lambda: 1) == 1
    time.sleep(0.1)
    assert cache.known_version("counts") is None  # expired: the next request reads it
    reading = threading.Event()
    release = threading.Event()

    def slow_read() -> int:
        reading.set()
        release.wait(5)
        return 2

    reader = threading.Thread(target=lambda: cache.version("counts", slow_read))
    reader.start()
    assert reading.wait(5)
    assert cache.known_version("counts") == 1  # no queue behind the database meanwhile
    release.set()
    reader.join(5)
    assert cache.known_version("counts") == 2
