"""The workbench's errors: one base, :class:`WorkbenchError`, and a subclass only where a
caller does something different with it (docs/architecture.md, "Errors").

Each message says what failed and what to do; ``workbench`` (the command) prints it as one
line, without a traceback. Errors of the ingestor's own code that the workbench calls
(reading the log: :class:`~ingestor.eventlog.LogGapError`, no NATS server) stay
:class:`~ingestor.errors.IngestorError`\\ s; the command presents those the same way.

* :class:`AuditError`, :class:`IdentityError`: a verdict or an identity record refused before
  anything is published (it would change nothing; the message says why).
* :class:`QueryError`: the running ingestor refused a live query or did not answer; the
  workbench falls back to reading the file or the log.
* :class:`FeedClosed`: the ingestor closed the live feed (``code``, ``reason``): subscribe
  again.
* :class:`ReportUsageError`: a report request that cannot work as given (exit status 2).
* :class:`CellFailed`: a report's cell raised; names the cell, keeps the partial notebook.
* :class:`NotSelfContained`: a report's page would need the network (``references``).
"""

from __future__ import annotations

from pathlib import Path


class WorkbenchError(Exception):
    """The workbench cannot do what was asked (no NATS for a verdict, nothing to read, a
    report or an export that cannot be made); the message says why."""


class AuditError(WorkbenchError):
    """A verdict that cannot be given (unknown entry, already restored, an exact duplicate)."""


class IdentityError(WorkbenchError):
    """An identity record that would change nothing (the message says why)."""


class QueryError(WorkbenchError):
    """The ingestor refused the query (not a single SELECT, bad SQL, not allowed)."""


class FeedClosed(WorkbenchError):
    """The ingestor closed the feed for a reason other than stopping (e.g. too slow)."""

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"live feed closed ({code}): {reason or 'no reason given'}")


class ReportUsageError(WorkbenchError):
    """The request itself is wrong: no such notebook, a bad parameter (exit status 2)."""


class CellFailed(WorkbenchError):
    """A cell of the notebook raised (or timed out, or its kernel died).

    ``cell_index`` counts the notebook's cells as written, from 0; ``first_line`` is its
    first line of code (comments skipped: many cells open with a tag comment); ``evalue``
    the first line of the message; ``partial`` the partly executed notebook, kept for
    debugging (``None`` if execution never got that far).
    """

    def __init__(
        self,
        notebook: Path,
        cell_index: int | None,
        first_line: str,
        ename: str,
        evalue: str,
        partial: Path | None,
    ) -> None:
        self.notebook = notebook
        self.cell_index = cell_index
        self.first_line = first_line
        self.ename = ename
        self.evalue = evalue
        self.partial = partial
        where = "before its first cell" if cell_index is None else f"in cell {cell_index}"
        if first_line:
            where += f" ({first_line})"
        message = f"{notebook} failed {where}: {ename}"
        if evalue:
            message += f": {evalue}"
        super().__init__(message)


class NotSelfContained(WorkbenchError):
    """The HTML would load something from outside itself (``references``), so it would not
    open offline; the executed notebook was written, the HTML was not."""

    def __init__(self, html: Path, references: list[tuple[int | None, str]]) -> None:
        self.references = references
        shown = ", ".join(
            f"{ref} (cell {index})" if index is not None else ref for index, ref in references[:3]
        )
        more = f" and {len(references) - 3} more" if len(references) > 3 else ""
        super().__init__(
            f"{html} not written: the page would need the network for {shown}{more} "
            "(render charts offline with workbench.charts.use_offline_renderer(), embed images)"
        )


__all__ = [
    "AuditError",
    "CellFailed",
    "FeedClosed",
    "IdentityError",
    "NotSelfContained",
    "QueryError",
    "ReportUsageError",
    "WorkbenchError",
]
