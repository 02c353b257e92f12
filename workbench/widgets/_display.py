"""What both widgets share: how they display things (MIME bundles, charts as inline SVG),
one-line error messages, and the asyncio tasks a widget starts from a UI event."""

from __future__ import annotations

import asyncio
import zoneinfo
from collections.abc import Coroutine, Iterable
from typing import Any

import altair as alt
import polars as pl
from IPython.core.formatters import DisplayFormatter

from workbench import charts

MAX_TABLE_ROWS = 200
"""A frame displayed by a widget shows up to this many rows (polars' default is 10)."""


def check_tz(tz: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"tz must be an IANA time zone name, got {tz!r}") from exc


def _bundle(item: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """A MIME bundle (data, metadata) for one displayed item: charts as inline SVG, the
    rest as IPython would format it."""
    if isinstance(item, alt.TopLevelMixin):
        return charts.svg_bundle(item), {}
    if isinstance(item, str):
        return {"text/plain": item}, {}
    if isinstance(item, pl.DataFrame):
        with pl.Config(tbl_rows=MAX_TABLE_ROWS, tbl_cols=-1):
            return {"text/html": item._repr_html_(), "text/plain": repr(item)}, {}
    data, metadata = DisplayFormatter().format(item)
    return dict(data), dict(metadata)


def display_outputs(items: Iterable[object]) -> tuple[dict[str, Any], ...]:
    """``Output.outputs`` entries (nbformat ``display_data``) for ``items``."""
    result = []
    for item in items:
        data, metadata = _bundle(item)
        result.append({"output_type": "display_data", "data": data, "metadata": metadata})
    return tuple(result)


def error_line(exc: BaseException) -> str:
    """One line for the status bar: the error's type and message, never a traceback."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Tasks:
    """The asyncio tasks a widget started from a UI event, kept referenced until done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def launch(self, work: Coroutine[Any, Any, Any]) -> bool:
        """Run ``work`` on the running loop (a kernel always has one). False, and ``work``
        is discarded, when there is no running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            work.close()
            return False
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
