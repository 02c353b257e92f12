"""The guard between the projection's readers and the swap of its connection.

A running ingestor compacts its DuckDB file after an erasure (``ingestor/erasure.py``): the
live rows are copied into a new file while readers read (DuckDB's MVCC), then the connection
is closed, the new file renamed over the old one, and the connection reopened. DuckDB
refuses to close a connection while a cursor taken from it runs a query ("connection is
busy"), and closing it closes every such cursor: unguarded, the swap would fail, or a reader
would ("Connection already closed"). :class:`ReadersWriter` makes the swap wait for the reads
in flight and the reads that start meanwhile wait for the swap; readers take their cursor
through :meth:`ingestor.projection.Projection.reading`, at use time.

A waiting writer goes first: reads that start after it asked wait behind it, so a steady
stream of readers (a dashboard polling ``/status``) cannot hold the swap off for ever. Not
reentrant: a thread that holds a read must not ask for another (it would wait behind a
waiting writer that waits for it).

>>> guard = ReadersWriter()
>>> with guard.reading():
...     guard.readers
1
>>> with guard.writing():
...     guard.readers
0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ReadersWriter:
    """Many readers at once, or one writer alone; a waiting writer goes before new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self.last_wait = 0.0
        """Seconds the last writer waited for the reads in flight."""

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Hold a read: no writer runs until it is released."""
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the guard alone: waits for the reads in flight; new reads wait for it."""
        started = time.perf_counter()
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        self.last_wait = time.perf_counter() - started
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    @property
    def readers(self) -> int:
        """The reads held now."""
        with self._cond:
            return self._readers
