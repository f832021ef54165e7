"""The live feed's reader wakes for a notify that comes while it is reading (in a thread).

Before the fix the reader took the event to wait on only *after* its read: a notify during
the read set the old event, and the reader then waited on the new one for its whole poll
interval (2 s in the API), though the events were already stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.api.alerts import Feed, FeedFilter, FeedNotifier


class _RacingFeed(Feed):
    """A feed whose first read finds nothing and, before it returns, the consumer stores an
    event and notifies (as it does from its own thread); later reads find that event."""

    def __init__(self, notifier: FeedNotifier) -> None:
        super().__init__(None, notifier, asyncio.Event(), FeedFilter(), 0)  # type: ignore[arg-type]
        self.reads = 0

    def _read(self) -> list[dict[str, Any]]:
        self.reads += 1
        if self.reads == 1:
            self.notifier.notify()  # from the threadpool thread: call_soon_threadsafe
            time.sleep(0.05)  # the wake-up runs on the loop before this read returns
            return []
        return [{"event_id": 7}]


def test_a_notify_during_the_read_wakes_the_reader() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], float]:
        notifier = FeedNotifier()
        notifier.bind(asyncio.get_running_loop())
        feed = _RacingFeed(notifier)
        started = time.perf_counter()
        batch = await feed.next_batch(wait=5.0)
        return batch, time.perf_counter() - started

    batch, elapsed = asyncio.run(scenario())
    assert batch == [{"event_id": 7}]
    assert elapsed < 2.0, f"the reader slept through the notify ({elapsed:.1f} s)"


def test_with_no_notify_the_reader_waits_its_interval() -> None:
    async def scenario() -> float:
        notifier = FeedNotifier()
        notifier.bind(asyncio.get_running_loop())

        class Quiet(_RacingFeed):
            def _read(self) -> list[dict[str, Any]]:
                return []

        started = time.perf_counter()
        assert await Quiet(notifier).next_batch(wait=0.3) == []
        return time.perf_counter() - started

    assert asyncio.run(scenario()) >= 0.3
