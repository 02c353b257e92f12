"""Progress for long work in a terminal: a bar on a TTY, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Report ``done`` of ``total`` units (``total`` may be unknown: 0).

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("rows", total=4, stream=out, every=0)
    >>> p.update(2); p.update(4); p.close()
    >>> out.getvalue().splitlines()[-1]
    'rows: 4/4 (100%)'
    """

    def __init__(
        self, label: str, total: int = 0, *, stream: TextIO | None = None, every: float = 2.0
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.every = every
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self.tty or now - self._last >= self.every:
            self._last = now
            self._write(final=False)

    def close(self) -> None:
        self._write(final=True)

    def _write(self, *, final: bool) -> None:
        if self.total:
            share = self.done / self.total
            text = f"{self.label}: {self.done:,}/{self.total:,} ({share:.0%})"
            if self.tty:
                bar = "#" * int(share * 30)
                text = f"{self.label} [{bar:.<30}] {self.done:,}/{self.total:,}"
        else:
            text = f"{self.label}: {self.done:,}"
        elapsed = time.monotonic() - self.started
        if self.tty:
            rate = self.done / elapsed if elapsed > 0 else 0.0
            self.stream.write(f"\r{text} {rate:,.0f}/s" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
