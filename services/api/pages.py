"""Answers the API has made, kept until the data under them changes.

An answer (a page of escalations, a statistics table) is stored under its request and the
*version* of the data it was made from: the alert feed's newest id for escalations (every
change to an escalation appends to the feed), the ``area_counts`` version for statistics.
A request at the same version gets the stored bytes; a new version makes a new answer.

When the data has just changed, the request that finds the new version makes the new
answer while others go on getting the previous one, for at most :attr:`PageCache.stale_s`
after it was last known to be current (made, or served at the version the request read),
instead of queueing behind it. Served that way, a page is a little
behind, never inconsistent: it carries the ``feed_position`` it was made at, and a client
that streams alerts from there receives every change since. ``stale_s = 0`` always waits
for the newest answer.

The version itself is read from the database at most every :attr:`PageCache.version_s`
seconds (never more than ``stale_s`` apart), by whichever request comes first; the others
use it. So a request for an answer already made asks the database nothing, and can be
served on the event loop (:meth:`PageCache.cached`) without a thread.
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

    def __init__(self, size: int = 256, stale_s: float = 1.0, version_s: float = 0.05) -> None:
        self.size = size
        self.stale_s = stale_s
        self.version_s = version_s
        self._versions: dict[Hashable, tuple[float, Hashable]] = {}  # name -> (read at, v)
        self._reading: dict[Hashable, int] = {}  # name -> requests reading it now
        self._pages: OrderedDict[Key, bytes] = OrderedDict()
        self._latest: dict[Hashable, tuple[float, bytes]] = {}  # request -> newest answer
        self._making: dict[Key, threading.Event] = {}
        self._lock = threading.Lock()
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asvat-pages")

    def known_version(self, name: Hashable) -> Hashable | None:
        """The version of ``name`` read less than ``min(version_s, stale_s)`` ago (or less
        than ``stale_s`` ago while another request reads it afresh), else None."""
        hit = self._versions.get(name)
        if hit is None:
            return None
        age = time.monotonic() - hit[0]
        if age < min(self.version_s, self.stale_s):
            return hit[1]
        if name in self._reading and age < self.stale_s:
            return hit[1]  # one request reads it; the others need not queue for the database
        return None

    def version(self, name: Hashable, read: Callable[[], Hashable]) -> Hashable:
        """:meth:`known_version`, else the version ``read`` returns now (then remembered)."""
        known = self.known_version(name)
        if known is not None:
            return known
        started = time.monotonic()  # the version is at least as new as this moment's
        with self._lock:
            self._reading[name] = self._reading.get(name, 0) + 1
        try:
            value = read()
        finally:
            with self._lock:
                self._reading[name] -= 1
                if not self._reading[name]:
                    del self._reading[name]
        with self._lock:
            previous = self._versions.get(name)
            if previous is None or previous[0] <= started:
                self._versions[name] = (started, value)
        return value

    def cached(self, request: Hashable, version: Hashable) -> bytes | None:
        """The answer to ``request`` at ``version`` if it is made already (as
        :meth:`get_or_make` would return it), else None: cheap enough for the event loop."""
        key = (request, version)
        with self._lock:
            page = self._pages.get(key)
            if page is None:
                return None
            self._pages.move_to_end(key)
            latest = self._latest.get(request)
            if latest is not None and latest[1] is page:
                self._latest[request] = (time.monotonic(), page)
            return page

    def get_or_make(self, request: Hashable, version: Hashable, make: Callable[[], bytes]) -> bytes:
        """The answer to ``request`` at ``version``, made by ``make`` if nobody has made it
        (``make`` must open its own database session: it may run on another thread)."""
        key = (request, version)
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
                latest = self._latest.get(request)
                if latest is not None and latest[1] is page:
                    # The caller read ``version`` just now: this answer is current as of now.
                    self._latest[request] = (time.monotonic(), page)
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
