"""How a report shows its figures: headline tiles, styled tables, one sentence under the
title, and the run's parameters in a collapsed block.

Every object here displays in a notebook (and in the HTML page ``workbench report`` writes)
as HTML, and carries a ``text/plain`` form of the same figures, which is what a terminal,
``print`` and nbval's checked cells see. The HTML is self-contained: no web font, no script,
no image from anywhere (``workbench.report.external_references`` finds nothing in it), and
it reads on a light or a dark page: tiles take the notebook theme's colours where Jupyter
defines them (light fallbacks elsewhere), tables are white cards with dark text like the
charts, and bars and colour scales are mid-tones that keep their contrast on both.

Tables are `great-tables <https://posit-dev.github.io/great-tables/>`_ tables made from
polars frames (:func:`table`): counts with thousands separators, watch time as
"12 h 30 min", shares as percentages with a bar, a colour scale where it helps, and title
cells that name a show's season and episode in words, without posters.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import polars as pl
from great_tables import GT, loc, style

ACCENT = "#4c78a8"
"""The bar colour of tables, the same blue as the charts' (a mid-tone: readable on white
and on a dark page)."""
UP = "#2f9e44"
DOWN = "#d9480f"
SCALE = ["#e7eef6", "#4c78a8"]
"""The colour scale of a table's heat column: pale to the accent blue (text stays dark on
both ends: great-tables picks the text colour by contrast)."""

FONT = (
    "var(--jp-ui-font-family, -apple-system, BlinkMacSystemFont, 'Segoe UI', Roboto, "
    "'Helvetica Neue', Arial, sans-serif)"
)

# ---------------------------------------------------------------------------- words


def duration(seconds: float | None) -> str:
    """Seconds of watch time in words a reader takes in at once: hours and minutes.

    >>> [duration(s) for s in (0, 59, 60, 3600, 45_000, 4_443_000, None)]
    ['0 min', '0 min', '1 min', '1 h 0 min', '12 h 30 min', '1,234 h 10 min', '']
    """
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    minutes = int(seconds) // 60
    hours, minutes = divmod(minutes, 60)
    return f"{hours:,} h {minutes} min" if hours else f"{minutes} min"


def count(value: float | None) -> str:
    """A whole number with thousands separators.

    >>> count(103_412), count(None)
    ('103,412', '')
    """
    return "" if value is None else f"{int(value):,}"


def percent(share: float | None, decimals: int = 0) -> str:
    """A share (0.25) as "25 %".

    >>> percent(0.25), percent(0.1234, 1), percent(None)
    ('25 %', '12.3 %', '')
    """
    return "" if share is None else f"{share * 100:,.{decimals}f} %"


def days_words(days: int) -> str:
    """ "the 7 days", "the day".

    >>> days_words(7), days_words(1)
    ('the 7 days', 'the day')
    """
    return "the day" if days == 1 else f"the {days:,} days"


def change_words(change: float | None, days: int) -> str:
    """A relative change against the period before, in words: "+12 % vs. the 7 days before";
    ``None`` (nothing before) reads "nothing in the 7 days before".

    >>> change_words(0.1234, 7), change_words(-0.5, 1), change_words(0.0, 7)
    ('+12 % vs. the 7 days before', '−50 % vs. the day before', '±0 % vs. the 7 days before')
    >>> change_words(None, 7)
    'nothing in the 7 days before'
    """
    if change is None:
        return f"nothing in {days_words(days)} before"
    rounded = round(change * 100)
    sign = "+" if rounded > 0 else "−" if rounded < 0 else "±"
    return f"{sign}{abs(rounded):,} % vs. {days_words(days)} before"


def join_words(words: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c".

    >>> join_words(["a"]), join_words(["a", "b"]), join_words(["a", "b", "c"])
    ('a', 'a and b', 'a, b and c')
    """
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} and {words[-1]}"


def period_words(first: date, last: date) -> str:
    """A period of local days as a reader says it.

    >>> period_words(date(2026, 1, 5), date(2026, 1, 11))
    'Monday 5 to Sunday 11 January 2026'
    >>> period_words(date(2025, 12, 29), date(2026, 1, 4))
    'Monday 29 December 2025 to Sunday 4 January 2026'
    >>> period_words(date(2026, 1, 5), date(2026, 1, 5))
    'Monday 5 January 2026'
    """
    end = f"{last:%A} {last.day} {last:%B %Y}"
    if first == last:
        return end
    if (first.year, first.month) == (last.year, last.month):
        return f"{first:%A} {first.day} to {end}"
    if first.year == last.year:
        return f"{first:%A} {first.day} {first:%B} to {end}"
    return f"{first:%A} {first.day} {first:%B %Y} to {end}"


SOURCE_PRODUCTS = {
    "plex": "Plex",
    "tautulli": "Plex",
    "jellyfin": "Jellyfin",
    "emby": "Emby",
    "simulator": "simulated",
}


def server_name(server_id: str, sources: Iterable[str], names: Mapping[str, str]) -> str:
    """What a reader calls a server: the name given for its id (or the id's first
    characters) in ``names``, else its product (from the sources that reported it) and
    the first 8 characters of its id.

    >>> server_name("3f2a9c1b77", ["plex_webhook", "tautulli"], {})
    'Plex server 3f2a9c1b'
    >>> server_name("3f2a9c1b77", ["jellyfin_ws"], {"3f2a": "Living room"})
    'Living room'
    """
    for key, name in names.items():
        if server_id.startswith(str(key)):
            return str(name)
    products = sorted(
        {
            product
            for source in sources
            for prefix, product in SOURCE_PRODUCTS.items()
            if source.startswith(prefix)
        }
    )
    kind = "/".join(products) + " server" if products else "server"
    return f"{kind} {server_id[:8]}"


# ---------------------------------------------------------------------------- display


@dataclass(frozen=True)
class Html:
    """A piece of report: ``html`` for the page, ``text`` for plain-text output (both
    shown by Jupyter as one output with ``text/html`` and ``text/plain``)."""

    html: str
    text: str

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self.html, "text/plain": self.text}

    def __str__(self) -> str:
        return self.text


def header(title: str, sentence: str) -> Html:
    """The page's title and the one sentence under it (period, servers, time zone).

    >>> print(header("Overview", "Last week on Plex, in Europe/Berlin."))
    Overview
    Last week on Plex, in Europe/Berlin.
    """
    page = (
        f'<header class="wb-header" style="font-family: {FONT}; margin: 0 0 8px 0;">'
        f'<h1 style="margin: 0 0 6px 0;">{html.escape(title)}</h1>'
        f'<p class="wb-lede" style="font-size: 17px; margin: 0; '
        f'color: var(--jp-ui-font-color1, #333);">{html.escape(sentence)}</p></header>'
    )
    return Html(page, f"{title}\n{sentence}")


# ---------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tile:
    """One headline figure: its ``label``, the ``value`` in words, and a ``note`` under it
    (the change against the period before, or a detail); ``change`` colours the note."""

    label: str
    value: str
    note: str = ""
    change: float | None = None


@dataclass(frozen=True)
class Tiles:
    """A row of headline tiles; displays as HTML cards and as one line per tile."""

    tiles: list[Tile] = field(default_factory=list)

    def _repr_html_(self) -> str:
        cards = []
        for tile in self.tiles:
            colour = "var(--jp-ui-font-color2, #555)"
            if tile.change is not None and round(tile.change * 100) != 0:
                colour = UP if tile.change > 0 else DOWN
            cards.append(
                '<div class="wb-tile" style="flex: 1 1 190px; padding: 12px 16px; '
                "border-radius: 8px; border: 1px solid var(--jp-border-color2, #ddd); "
                'background: var(--jp-layout-color1, #fff);">'
                '<div class="wb-tile-label" style="font-size: 13px; text-transform: uppercase; '
                f'letter-spacing: .04em; color: var(--jp-ui-font-color2, #555);">'
                f"{html.escape(tile.label)}</div>"
                '<div class="wb-tile-value" style="font-size: 26px; font-weight: 600; '
                "white-space: nowrap; "
                f'margin: 2px 0; color: var(--jp-ui-font-color0, #111);">'
                f"{html.escape(tile.value)}</div>"
                f'<div class="wb-tile-note" style="font-size: 13px; color: {colour};">'
                f"{html.escape(tile.note)}</div></div>"
            )
        return (
            f'<div class="wb-tiles" style="display: flex; flex-wrap: wrap; gap: 12px; '
            f'font-family: {FONT}; margin: 4px 0 12px 0;">{"".join(cards)}</div>'
        )

    def __str__(self) -> str:
        return "\n".join(
            f"{tile.label}: {tile.value}" + (f" ({tile.note})" if tile.note else "")
            for tile in self.tiles
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self._repr_html_(), "text/plain": str(self)}


def period_tiles(comparison: pl.DataFrame, *, days: int) -> Tiles:
    """The four headline tiles of a period from :func:`workbench.stats.compare_periods`:
    plays, watch time, users and peak concurrent streams, each with its change against
    the ``days`` before.

    >>> frame = pl.DataFrame({
    ...     "measure": ["plays", "watch_time", "users", "peak_streams"],
    ...     "current": [1234, 45_000, 12, 4], "previous": [1100, 50_000, 12, 0],
    ...     "change": [1234 / 1100 - 1, -0.1, 0.0, None],
    ... })
    >>> print(period_tiles(frame, days=7))
    Plays: 1,234 (+12 % vs. the 7 days before)
    Watch time: 12 h 30 min (−10 % vs. the 7 days before)
    Users: 12 (±0 % vs. the 7 days before)
    Peak concurrent streams: 4 (nothing in the 7 days before)
    """
    labels = {
        "plays": ("Plays", count),
        "watch_time": ("Watch time", duration),
        "users": ("Users", count),
        "peak_streams": ("Peak concurrent streams", count),
    }
    tiles = []
    for measure, current, _previous, change in comparison.select(
        "measure", "current", "previous", "change"
    ).rows():
        label, words = labels[measure]
        tiles.append(Tile(label, words(current), change_words(change, days), change))
    return Tiles(tiles)


# ---------------------------------------------------------------------------- tables


def plain(frame: pl.DataFrame) -> str:
    """A frame as aligned plain text, numbers right-aligned (what
    :func:`workbench.db.show` prints), for the ``text/plain`` side of a table.

    >>> print(plain(pl.DataFrame({"user": ["ana", "bo"], "plays": [1200, 3]})))
      user  plays
      ana   1,200
      bo        3
    """
    numeric = [dtype.is_numeric() for dtype in frame.dtypes]

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    rows = [list(frame.columns)] + [[cell(value) for value in row] for row in frame.rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(frame.width)]
    lines = []
    for row in rows:
        cells = [
            c.rjust(width) if right else c.ljust(width)
            for c, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


@dataclass(frozen=True)
class Table:
    """A styled table (``gt``, great-tables) and the frame it shows, displayed as the
    table's HTML with the frame as plain text beside it."""

    gt: GT
    frame: pl.DataFrame

    def _repr_html_(self) -> str:
        return self.gt.as_raw_html()

    def __str__(self) -> str:
        return plain(self.frame)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self._repr_html_(), "text/plain": str(self)}


def title_cell(title: str | None, detail: str | None = None) -> str:
    """A title as a table shows it: the title, and under it in small type what it is
    (``detail``: "TV show", "Season 2 · Episode: Pilot", a year...); escaped HTML.

    >>> title_cell("Lost", "TV show")
    '<div class="wb-title">Lost</div><div class="wb-title-detail" style="font-size: 12px; opacity: .7;">TV show</div>'
    """  # noqa: E501
    cell = f'<div class="wb-title">{html.escape(title or "unknown")}</div>'
    if detail:
        cell += (
            '<div class="wb-title-detail" style="font-size: 12px; opacity: .7;">'
            f"{html.escape(detail)}</div>"
        )
    return cell


MEDIA_WORDS = {"episode": "TV show", "movie": "Movie", "track": "Music", "unknown": ""}


def media_words(media_type: str | None) -> str:
    """What a ``media_type`` is called on a title's second line (a show's episodes roll
    up to the show).

    >>> media_words("episode"), media_words("movie"), media_words("clip")
    ('TV show', 'Movie', 'Clip')
    """
    kind = media_type or "unknown"
    return MEDIA_WORDS.get(kind, kind.capitalize())


def _bar(share: float | None) -> str:
    if share is None:
        return ""
    width = max(0.0, min(share, 1.0)) * 100
    return (
        '<div style="display: flex; align-items: center; gap: 6px; min-width: 140px;">'
        '<div style="flex: 1; height: 10px; background: rgba(127, 127, 127, .18); '
        'border-radius: 5px;">'
        f'<div style="width: {width:.1f}%; height: 10px; background: {ACCENT}; '
        'border-radius: 5px;"></div></div>'
        f'<span style="min-width: 42px; text-align: right;">{percent(share)}</span></div>'
    )


def table(
    frame: pl.DataFrame,
    *,
    id: str,
    title: str | None = None,
    subtitle: str | None = None,
    labels: Mapping[str, str] | None = None,
    counts: Sequence[str] = (),
    durations: Sequence[str] = (),
    shares: Sequence[str] = (),
    heat: str | None = None,
    titles: Mapping[str, str] | None = None,
    hidden: Sequence[str] = (),
) -> Table:
    """``frame`` as a styled table: ``counts`` with thousands separators, ``durations``
    (seconds) as "12 h 30 min", ``shares`` (0-1) as a bar with the percentage, ``heat``
    coloured on a scale from its smallest to its largest value, ``titles`` (a title
    column -> the column holding its detail) as title cells (:func:`title_cell`);
    ``hidden`` columns are used but not shown; ``labels`` renames column headings; ``id``
    makes the HTML the same from run to run (great-tables draws a random one otherwise).

    The plain-text side is the frame as shown, durations in words, shares as percentages.

    >>> t = table(
    ...     pl.DataFrame({"user": ["ana", "bo"], "plays": [1200, 300], "watch_time": [45_000, 60]}),
    ...     id="users", counts=["plays"], durations=["watch_time"], heat="plays",
    ...     labels={"watch_time": "Watch time"},
    ... )
    >>> print(t)
      user  plays  Watch time
      ana   1,200  12 h 30 min
      bo      300  1 min
    >>> page = t._repr_html_()
    >>> "12 h 30 min" in page, "1,200" in page, 'id="users"' in page, "http" in page
    (True, True, True, False)
    """
    labels = dict(labels or {})
    titles = dict(titles or {})
    shown = [c for c in frame.columns if c not in hidden and c not in titles.values()]
    cells = frame.with_columns(
        pl.struct(name, detail)
        .map_elements(
            lambda row, n=name, d=detail: title_cell(row[n], row[d]), return_dtype=pl.String
        )
        .alias(name)
        for name, detail in titles.items()
    )
    gt = GT(cells, id=id)
    if title:
        gt = gt.tab_header(title=title, subtitle=subtitle)
    if counts:
        gt = gt.fmt_integer(columns=list(counts), use_seps=True)
    for name in durations:
        gt = gt.fmt(columns=name, fns=duration)
    for name in shares:
        gt = gt.fmt(columns=name, fns=_bar)
    for name in titles:
        gt = gt.fmt(columns=name, fns=str)  # the cell's HTML as it is (a value is escaped)
    if heat is not None and frame.height and frame[heat].n_unique() > 1:
        gt = gt.data_color(columns=heat, palette=SCALE)
    hide = [c for c in frame.columns if c not in shown and c not in titles]
    if hide:
        gt = gt.cols_hide(columns=hide)
    gt = (
        gt.cols_label(**{c: labels.get(c, c) for c in frame.columns})
        .tab_options(
            table_font_names=FONT.removeprefix("var(--jp-ui-font-family, ").removesuffix(")"),
            table_font_size="15px",
            heading_align="left",
            table_margin_left="0px",
            heading_title_font_size="18px",
            column_labels_font_weight="bold",
            table_border_top_style="none",
            heading_border_bottom_style="none",
            data_row_padding="6px",
        )
        .tab_style(style=style.text(whitespace="nowrap"), locations=loc.body(columns=list(counts)))
    )
    text = frame.select(
        [
            (
                pl.col(c).map_elements(duration, return_dtype=pl.String)
                if c in durations
                else pl.col(c).map_elements(percent, return_dtype=pl.String)
                if c in shares
                else pl.col(c)
            ).alias(labels.get(c, c))
            for c in frame.columns
            if c not in hide
        ]
    )
    return Table(gt, text)


# ---------------------------------------------------------------------------- details


def details(summary: str, rows: Mapping[str, Any], note: str = "") -> Html:
    """A collapsed block (``<details>``) listing ``rows`` (name -> value) under
    ``summary``, with a ``note`` after them; plain text lists them one a line.

    >>> print(details("How this report was made", {"tz": "Europe/Berlin", "top": 10}))
    How this report was made
      tz: 'Europe/Berlin'
      top: 10
    """
    items = "".join(
        f"<tr><th style='text-align: left; padding-right: 16px; font-weight: 600;'>"
        f"{html.escape(str(name))}</th><td><code>{html.escape(repr(value))}</code></td></tr>"
        for name, value in rows.items()
    )
    note_html = f"<p>{html.escape(note)}</p>" if note else ""
    page = (
        f'<details class="wb-details" style="font-family: {FONT}; margin: 16px 0;">'
        f"<summary style='cursor: pointer;'>{html.escape(summary)}</summary>"
        f"<table style='margin: 8px 0;'>{items}</table>{note_html}</details>"
    )
    text = "\n".join(
        [summary, *(f"  {name}: {value!r}" for name, value in rows.items())]
        + ([note] if note else [])
    )
    return Html(page, text)


def report_details(
    notebook: str, parameters: Mapping[str, Any], seq: int | None, recorded: datetime | None
) -> Html:
    """A report's "How this report was made": the ``notebook``, its ``parameters``, and the
    as-of point that makes it reproducible: the log sequence ``seq`` it read, recorded up to
    ``recorded``, and how to render the same figures again.

    >>> from datetime import UTC, datetime
    >>> at = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
    >>> print(report_details("overview", {"tz": "UTC"}, 42, at))  # doctest: +NORMALIZE_WHITESPACE
    How this report was made
      notebook: 'overview'
      tz: 'UTC'
    The projection was read at log sequence 42 (recorded up to 2026-01-05 20:00:00 UTC). The
    log only grows, so the as-of point makes the report reproducible: run it again with -p
    as_of 2026-01-05T20:00:00.000000Z and it shows these figures whatever was recorded since.
    """
    note = (
        f"The projection was read at log sequence {seq or 0:,}"
        + (f" (recorded up to {recorded:%Y-%m-%d %H:%M:%S %Z})" if recorded else "")
        + ". The log only grows, so the as-of point makes the report reproducible: run it again "
        + "with -p as_of "
        + (f"{recorded:%Y-%m-%dT%H:%M:%S.%f}Z" if recorded else "TIME")
        + " and it shows these figures whatever was recorded since."
    )
    return details("How this report was made", {"notebook": notebook, **parameters}, note)


__all__ = [
    "ACCENT",
    "Html",
    "Table",
    "Tile",
    "Tiles",
    "change_words",
    "count",
    "days_words",
    "details",
    "duration",
    "header",
    "join_words",
    "media_words",
    "percent",
    "period_tiles",
    "period_words",
    "plain",
    "report_details",
    "server_name",
    "table",
    "title_cell",
]
