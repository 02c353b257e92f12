"""The time slider: a slider over instants that shows the projection as of the chosen one.

Moving it (or ``await slider.show_at(t)`` from code) asks the workbench for the projection as
of that instant on the chosen clock, and draws the default view (who was playing, the
concurrent streams up to it) or any ``view`` given, off the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import altair as alt
import ipywidgets
import polars as pl

from workbench import charts, stats
from workbench.log import EventLog
from workbench.replay import CLOCKS, Clock, Replay, aware_utc, replay
from workbench.temporal import active_at
from workbench.widgets._display import Tasks, check_tz, display_outputs, error_line

if TYPE_CHECKING:
    from workbench.api import Workbench

logger = logging.getLogger(__name__)

MAX_SLIDER_STEPS = 5000
"""A slider with more positions than this is refused: every label travels to the browser."""

STREAMS_WINDOW = timedelta(hours=24)
"""The slider's chart shows the concurrent streams of this long up to its instant (the whole
history up to it is what ``workbench.stats.concurrent_streams`` gives)."""

DEFAULT_TIMEOUT = 30.0
"""Seconds a slider move waits for its answer before it says so and gives up."""

ACTIVE_COLUMNS = [
    "username",
    "title",
    "grandparent_title",
    "media_type",
    "state_at",
    "player",
    "platform",
    "sources",
    "started_at",
]
"""The columns of the default slider view's table, those present in ``active_at``'s frame."""


View = Callable[[Replay], object]
"""What the slider shows for a replay: returns one displayable object, a tuple or list of
them, or an awaitable of either. Altair charts are shown as inline SVG."""


@dataclass(frozen=True)
class SliderView:
    """What the default view drew for an instant."""

    instant: datetime
    active: pl.DataFrame  # workbench.temporal.active_at at the instant
    # workbench.stats.concurrent_streams in the STREAMS_WINDOW up to the instant (in tz)
    streams: pl.DataFrame
    chart: alt.TopLevelMixin


class TimeSlider:
    """A slider over instants from ``start`` to ``end``: moving it shows the projection as
    of the chosen instant on the chosen clock.

    ``source`` is a :class:`~workbench.Workbench` (the state is read from the projection it
    reads: :meth:`~workbench.Workbench.as_of`) or an :class:`~workbench.log.EventLog` (the
    log is projected once, on the first move; see :func:`workbench.replay.replay`). Either
    way a move answers from a projection, without replaying the log.

    The default view is the playbacks active at that instant
    (:func:`workbench.temporal.active_at`) as a table, and the concurrent streams of the
    :data:`STREAMS_WINDOW` up to it as a chart; ``view`` replaces it with any
    ``Callable[[Replay], object]``. Labels and times read in ``tz``. ``step`` is the
    distance between two slider positions; the positions are ``start``, ``start + step``,
    ... up to ``end`` (included when on the grid).

    Only the latest request is drawn, whatever the rate of moves: a move cancels the one in
    flight (an answer a worker thread still finishes is closed without being drawn), and a
    move that has no answer within ``timeout`` seconds gives up. Failures (a timeout, an
    ingestor or NATS that does not answer) are one line in the status bar; the slider keeps
    working. The default view is drawn off the event loop, so the kernel stays responsive.
    The slider keeps the replay it shows open (``.replay``) and closes it when it shows
    another one or when :meth:`close` is called.

    Use it as the last expression of a cell (``slider``), or drive it from code; in a
    notebook, ``await slider.show_at(...)`` directly:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> slider = TimeSlider(
    ...     simulated_log(Path(tmp.name)),
    ...     start="2026-01-05T18:00:00Z",
    ...     end="2026-01-06T02:00:00Z",
    ...     step=timedelta(minutes=15),
    ...     tz="Europe/Berlin",
    ... )
    >>> replayed = asyncio.run(slider.show_at("2026-01-05T21:00:00Z"))
    >>> slider.view_result.active.select("username", "title", "state_at").rows()
    [('dana', 'The Glass Summer', 'playing'), ('bruno', 'Letter of the Last', 'paused'), \
('bruno', 'Letter of the Last', 'paused')]
    >>> [sorted(output["data"]) for output in slider.output.outputs]
    [['text/html', 'text/plain'], ['image/svg+xml', 'text/plain']]
    >>> slider.close(); replayed.closed
    True
    >>> tmp.cleanup()
    """

    def __init__(
        self,
        source: EventLog | Workbench,
        *,
        start: datetime | str,
        end: datetime | str,
        step: timedelta = timedelta(minutes=5),
        clock: Clock = "recorded",
        view: View | None = None,
        tz: str = "UTC",
        tolerance: float = 10.0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        first, last = aware_utc(start, "start"), aware_utc(end, "end")
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        if last < first:
            raise ValueError(f"end ({last.isoformat()}) is before start ({first.isoformat()})")
        if step <= timedelta(0):
            raise ValueError(f"step must be a positive timedelta, got {step}")
        if clock not in CLOCKS:
            raise ValueError(f"clock must be 'recorded' or 'occurred', got {clock!r}")
        steps = int((last - first) / step) + 1
        if steps > MAX_SLIDER_STEPS:
            raise ValueError(
                f"{steps} slider positions from {first.isoformat()} to {last.isoformat()} "
                f"every {step}: at most {MAX_SLIDER_STEPS}; choose a larger step"
            )
        self.source = source
        self.tz = tz
        self.tolerance = tolerance
        self.timeout = timeout
        """Seconds a move may take before it gives up with a message in the status line."""
        self._zone = check_tz(tz)
        self._view = view
        self.instants: list[datetime] = [first + index * step for index in range(steps)]
        self._positions = set(self.instants)

        self.slider = ipywidgets.SelectionSlider(
            options=[(self._label(instant), instant) for instant in self.instants],
            value=self.instants[0],
            description="As of",
            continuous_update=False,
            readout=True,
            layout=ipywidgets.Layout(width="95%"),
        )
        self.clock_toggle = ipywidgets.ToggleButtons(
            options=[("recorded", "recorded"), ("occurred", "occurred")],
            tooltips=["what the log had recorded by then", "what had happened by then"],
            value=clock,
            description="Clock",
        )
        self.status = ipywidgets.HTML(value="Move the slider to travel in time.")
        self.output = ipywidgets.Output()
        self.widget = ipywidgets.VBox([self.slider, self.clock_toggle, self.status, self.output])

        self.replay: Replay | None = None
        """The replay drawn last (open until the next one is drawn or :meth:`close`)."""
        self.instant: datetime | None = None
        """The instant drawn last (UTC)."""
        self.view_result: object = None
        """What the view returned for the replay drawn last (a :class:`SliderView` for the
        default view)."""

        self._generation = 0
        self._running: asyncio.Task[Any] | None = None
        self._syncing = False
        self._tasks = Tasks()
        self.slider.observe(self._on_slider, names="value")
        self.clock_toggle.observe(self._on_clock, names="value")

    # ----------------------------------------------------------------- public

    @property
    def clock(self) -> Clock:
        """The clock the next replay uses (the toggle's value)."""
        return self.clock_toggle.value  # type: ignore[no-any-return]

    async def show_at(
        self, instant: datetime | str, *, clock: Clock | None = None
    ) -> Replay | None:
        """Replay the log as of ``instant`` on ``clock`` (default: the toggle's) and draw it.

        This is what a slider move runs. Returns the replay now shown (the slider owns it:
        it closes it when it draws another), or ``None`` when a later request superseded
        this one (its replay, if it ran, is closed). A failed replay or view shows its
        error in the status line and raises it.
        """
        when = aware_utc(instant, "instant")
        chosen: Clock = clock if clock is not None else self.clock
        if chosen not in CLOCKS:
            raise ValueError(f"clock must be 'recorded' or 'occurred', got {chosen!r}")
        self._sync_controls(when, chosen)
        return await self._show(when, chosen)

    async def _show(self, when: datetime, chosen: Clock) -> Replay | None:
        """The work of :meth:`show_at`, shared with slider moves (which must not move the
        slider back to an older position while the user drags it).

        Newest wins: this request cancels the one in flight (its answer, should a thread
        still finish it, is closed unseen), and gives up after :attr:`timeout` seconds."""
        self._generation += 1
        ticket = self._generation
        if self._running is not None:
            self._running.cancel()
        self.status.value = html.escape(f"Reading the projection as of {self._label(when)}...")
        work = asyncio.ensure_future(self._answer(when, chosen, ticket))
        self._running = work
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                answered = await work
        except asyncio.CancelledError:
            work.cancel()
            if ticket != self._generation:
                return None  # superseded: the newer request draws
            raise
        except _DrawFailed as failed:
            raise failed.error from None  # the status line says it already
        except Exception as exc:
            if ticket != self._generation:
                return None
            if isinstance(exc, TimeoutError) and deadline.expired():
                work.cancel()
                what = (
                    f"No answer as of {self._label(when)} within {self.timeout:g} s "
                    "(is the ingestor busy or gone?); move the slider to try again"
                )
                self.status.value = self._error(what, None)
            else:
                self.status.value = self._error(f"Could not read the projection as of {when}", exc)
            raise
        finally:
            if self._running is work:
                self._running = None
        if answered is None:
            return None
        replayed, result, outputs = answered
        self._replace(replayed, when, result)
        self.output.outputs = outputs
        self.status.value = self._summary(replayed, result)
        return replayed

    async def _answer(
        self, when: datetime, chosen: Clock, ticket: int
    ) -> tuple[Replay, object, tuple[dict[str, Any], ...]] | None:
        """The state as of ``when`` and what the view draws of it (None: superseded)."""
        if isinstance(self.source, EventLog):
            replayed = await replay(
                self.source, when, chosen, progress=False, tolerance=self.tolerance
            )
        else:
            replayed = await self.source.as_of(when, chosen)
        if ticket != self._generation:
            replayed.close()
            return None
        try:
            if self._view is None:  # the default view draws off the event loop
                result, outputs = await _off_loop(self._render, replayed)
            else:
                result = self._view(replayed)
                if inspect.isawaitable(result):
                    result = await result
                outputs = display_outputs(self._items(result))
        except asyncio.CancelledError:
            if self._view is not None:
                replayed.close()
            raise
        except Exception as exc:
            if ticket == self._generation:
                self._replace(replayed, when, None)
                self.output.outputs = ()
                self.status.value = self._error("Could not draw the projection", exc)
            else:
                replayed.close()
            raise _DrawFailed(exc) from exc
        if ticket != self._generation:
            replayed.close()
            return None
        return replayed, result, outputs

    def _render(self, replayed: Replay) -> tuple[object, tuple[dict[str, Any], ...]]:
        result = self._default_view(replayed)
        return result, display_outputs(self._items(result))

    async def wait_idle(self) -> None:
        """Wait until every replay started by a slider or clock change has finished."""
        await self._tasks.wait()

    def close(self) -> None:
        """Close the replay shown (its temporary file is deleted); a move still running is
        cancelled, and its answer closed without being drawn."""
        self._generation += 1
        if self._running is not None:
            self._running.cancel()
        if self.replay is not None:
            self.replay.close()
        self.replay = None

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        shown = self.instant.isoformat() if self.instant else None
        return f"TimeSlider(positions={len(self.instants)}, clock={self.clock!r}, shown={shown})"

    # ----------------------------------------------------------------- internals

    def _label(self, instant: datetime) -> str:
        return instant.astimezone(self._zone).strftime("%a %Y-%m-%d %H:%M %Z")

    def _sync_controls(self, instant: datetime, clock: Clock) -> None:
        """Move the slider and the toggle to what is being drawn, without triggering them."""
        self._syncing = True
        try:
            if instant in self._positions and self.slider.value != instant:
                self.slider.value = instant
            if self.clock_toggle.value != clock:
                self.clock_toggle.value = clock
        finally:
            self._syncing = False

    def _on_slider(self, change: Mapping[str, Any]) -> None:
        if not self._syncing:
            self._start(change["new"], self.clock)

    def _on_clock(self, change: Mapping[str, Any]) -> None:
        if not self._syncing:
            self._start(self.slider.value, change["new"])

    def _start(self, instant: datetime, clock: Clock) -> None:
        async def run() -> None:
            try:
                await self._show(instant, clock)
            except Exception:  # already in the status line
                logger.debug("slider replay as of %s failed", instant, exc_info=True)

        if not self._tasks.launch(run()):
            self.status.value = html.escape(
                "No running event loop: call `await slider.show_at(instant)`."
            )

    def _draw(self, replayed: Replay) -> object:
        if self._view is not None:
            return self._view(replayed)
        return self._default_view(replayed)

    def _default_view(self, replayed: Replay) -> SliderView:
        instant = replayed.as_of
        assert instant is not None
        active = active_at(replayed, instant)
        streams = stats.concurrent_streams(replayed.con, until=instant, tz=self.tz).filter(
            pl.col("at").dt.convert_time_zone("UTC") >= instant - STREAMS_WINDOW
        )
        chart = charts.concurrent_streams(
            streams, title=f"Concurrent streams up to {self._label(instant)}"
        )
        return SliderView(instant, active, streams, chart)

    def _items(self, result: object) -> list[object]:
        """The displayable items of a view's result (a SliderView: its table and chart)."""
        if isinstance(result, SliderView):
            columns = [name for name in ACTIVE_COLUMNS if name in result.active.columns]
            table = result.active.select(columns)
            if "started_at" in columns:
                table = table.with_columns(pl.col("started_at").dt.convert_time_zone(self.tz))
            return [table, result.chart]
        items = list(result) if isinstance(result, tuple | list) else [result]
        return [item for item in items if item is not None]

    def _replace(self, replayed: Replay, instant: datetime, result: object) -> None:
        previous = self.replay
        self.replay, self.instant, self.view_result = replayed, instant, result
        if previous is not None and previous is not replayed:
            previous.close()

    def _summary(self, replayed: Replay, result: object) -> str:
        assert replayed.as_of is not None
        head = f"As of {self._label(replayed.as_of)} ({replayed.clock} clock)"
        read = f"answered in {replayed.stats.seconds:.2f} s"
        if replayed.stats.messages:
            read = f"projected {replayed.stats.messages:,} new log messages; {read}"
        if isinstance(result, SliderView):
            count = result.active.height
            playing = f"{count} playback{'s' if count != 1 else ''} active"
            return html.escape(f"{head}: {playing}; {read}.")
        return html.escape(f"{head}: {read}.")

    @staticmethod
    def _error(what: str, exc: BaseException | None) -> str:
        said = f"{what}: {error_line(exc)}" if exc is not None else what
        return f'<span style="color:#b00020">{html.escape(said)}</span>'


class _DrawFailed(Exception):
    """The view failed on an answer (its message is in the status line already)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


_DRAWING: concurrent.futures.ThreadPoolExecutor | None = None


async def _off_loop(
    fn: Callable[[Replay], tuple[object, tuple[dict[str, Any], ...]]], replayed: Replay
) -> tuple[object, tuple[dict[str, Any], ...]]:
    """``fn(replayed)`` in a worker thread; if the caller is cancelled meanwhile, the
    replay is closed once the thread lets go of it (never under its feet)."""
    global _DRAWING
    if _DRAWING is None:
        _DRAWING = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="workbench-draw")
    future = _DRAWING.submit(fn, replayed)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda _: replayed.close())
        raise


__all__ = [
    "ACTIVE_COLUMNS",
    "DEFAULT_TIMEOUT",
    "MAX_SLIDER_STEPS",
    "STREAMS_WINDOW",
    "SliderView",
    "TimeSlider",
    "View",
]
