"""Where a time-slider move's time goes: the default view's steps, timed one by one.

``bench/replay.py`` runs :func:`profile_move` at the instant of the slowest warm slider move
of each clock, and prints :func:`breakdown_line` under its figures. The steps are the ones the
time slider's default view takes (``workbench.widgets.time_slider``): the answer as of the
instant, ``active_at``, the concurrent streams, the chart built and rendered offline to SVG.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from workbench import charts
from workbench.api import Workbench
from workbench.replay import Clock
from workbench.stats import concurrent_streams
from workbench.temporal import active_at
from workbench.widgets import TimeSlider


@dataclass
class MoveBreakdown:
    """One slider move's work done step by step (as the default view does it), at the
    instant of the slowest warm move of a clock: where a move's time goes."""

    clock: str
    instant: datetime
    move_seconds: float  # that move, as timed through show_at
    again_seconds: float  # show_at at that instant once more, right after the steps
    stages: dict[str, float]
    streams_rows: int
    svg_kb: float


async def profile_move(
    wb: Workbench,
    instant: datetime,
    clock: Clock,
    move_seconds: float,
    *,
    tolerance: float,
    step: timedelta = timedelta(minutes=15),
) -> MoveBreakdown:
    """The default view's steps at ``instant`` on ``clock``, timed one by one, then the same
    move once more through ``show_at`` (``move_seconds``: how long it took in the series)."""
    stages: dict[str, float] = {}
    started = time.perf_counter()
    answer = await wb.as_of(instant, clock)
    stages["wb.as_of"] = time.perf_counter() - started
    try:
        started = time.perf_counter()
        active_at(answer, instant)
        stages["active_at"] = time.perf_counter() - started
        started = time.perf_counter()
        streams = concurrent_streams(answer.con, until=instant, tz="UTC")
        stages["concurrent_streams"] = time.perf_counter() - started
        started = time.perf_counter()
        chart = charts.concurrent_streams(streams, title="Concurrent streams")
        stages["charts.concurrent_streams (build)"] = time.perf_counter() - started
        started = time.perf_counter()
        bundle = charts.svg_bundle(chart)
        stages["charts.svg_bundle (vl-convert)"] = time.perf_counter() - started
    finally:
        answer.close()
    # the same move once more through show_at, beside the steps (same conditions)
    slider = TimeSlider(wb, start=instant, end=instant, step=step, clock=clock, tolerance=tolerance)
    try:
        started = time.perf_counter()
        await slider.show_at(instant)
        again = time.perf_counter() - started
    finally:
        slider.close()
    return MoveBreakdown(
        clock,
        instant,
        move_seconds,
        again,
        stages,
        streams.height,
        len(bundle["image/svg+xml"]) / 1024,
    )


def breakdown_line(x: MoveBreakdown) -> str:
    """One line of the report: the steps and their sum beside the move's own time."""
    stages = ", ".join(f"{name} {seconds:.3f}s" for name, seconds in x.stages.items())
    return (
        f"  slider move at {x.instant:%m-%d %H:%M} ({x.clock} clock, the slowest warm one,"
        f" {x.move_seconds:.3f}s) step by step: {stages} (sum {sum(x.stages.values()):.3f}s;"
        f" show_at there once more {x.again_seconds:.3f}s); {x.streams_rows:,} change points,"
        f" SVG {x.svg_kb:,.0f} KB"
    )
