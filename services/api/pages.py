"""Answers the API has made, kept until the data under them changes.

An answer (a page of escalations, a statistics table) is stored under its request and the
*version* of the data it was made from: the alert feed's newest id for escalations (every
change to an escalation appends to the feed), the ``area_counts`` version for statistics.
A request at the same version gets the stored bytes; a new version makes a new answer.

When the data has just changed, the request that finds the new version makes the new
answer while others go on getting the previous one, for at most :attr:`PageCache.stale_s`
after it was made, instead of queueing behind it. Served that way, a page is a little
behind, never inconsistent: it carries the ``feed_position`` it was made at, and a client
that streams alerts from there receives every change since. ``stale_s = 0`` always waits
for the newest answer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Key = tuple[Any, ...]


class PageCache:
    """A thread-safe LRU of answers by (request, version), each made once."""

    def __init__(self, size: int = 256, stale_s: float = 1.0) -> None:
        self.size = size
        self.stale_s = stale_s
        self._pages: OrderedDict[Key, bytes] = OrderedDict()
        self._latest: dict[Hashable, tuple[float, bytes]] = {}  # request -> newest answer
        self._making: dict[Key, threading.Event] = {}
        self._lock = threading.Lock()
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asvat-pages")

    def get_or_make(
        self, request: Hashable, version: Hashable, make: Callable[[], bytes]
    ) -> bytes:
        """The answer to ``request`` at ``version``, made by ``make`` if nobody has made it
        (``make`` must open its own database session: it may run on another thread)."""
        key = (request, version)
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
                return page
            making = self._making.get(key)
            previous = self._latest.get(request)
            if previous is not None and time.monotonic() - previous[0] <= self.stale_s:
                # The data has just changed: the previous answer now, the new one made once,
                # off the request path.
                if making is None:
                    self._making[key] = threading.Event()
                    self._background.submit(self._make, request, key, make)
                return previous[1]
            mine = making is None
            if making is None:
                making = self._making[key] = threading.Event()
        if not mine:
            making.wait(30)
            return self.get(key) or make()
        return self._make(request, key, make)

    def _make(self, request: Hashable, key: Key, make: Callable[[], bytes]) -> bytes:
        try:
            page = make()
            with self._lock:
                self._pages[key] = page
                self._pages.move_to_end(key)
                self._latest[request] = (time.monotonic(), page)
                while len(self._pages) > self.size:
                    self._pages.popitem(last=False)
                if len(self._latest) > 4 * self.size:
                    self._latest.clear()
            return page
        finally:
            with self._lock:
                making = self._making.pop(key, None)
            if making is not None:
                making.set()

    def get(self, key: Key) -> bytes | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page
