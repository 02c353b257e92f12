"""The audit browser: dedup audit entries, filtered and paged, one shown beside the report it
was dropped or linked for, with confirm and restore buttons (``browser.select(audit_id)``,
``await browser.confirm_selected()`` from code)."""

from __future__ import annotations

import asyncio
import html
import inspect
import json
import logging
import math
import zoneinfo
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import ipywidgets
import polars as pl

from workbench.widgets._display import Tasks, check_tz, error_line

logger = logging.getLogger(__name__)

Action = Literal["confirm", "restore"]
Callback = Callable[[str], object | Awaitable[object]]
"""``on_confirm``/``on_restore``: called with an ``audit_id``; may return an awaitable."""

FILTER_COLUMNS = ("tier", "source", "status")
TABLE_COLUMNS = [
    "audit_id",
    "tier",
    "action",
    "reason",
    "status",
    "source",
    "kept_source",
    "username",
    "title",
    "occurred_at",
    "similarity_score",
]
"""The columns of the browser's table, those present in the entries."""

REPORT_FIELDS = [
    "event_id",
    "event_type",
    "source",
    "session_key",
    "correlation_key",
    "occurred_at",
    "started_at",
    "server_id",
    "user_id",
    "username",
    "media_type",
    "title",
    "grandparent_title",
    "rating_key",
    "machine_id",
    "player",
    "platform",
]
"""Fields compared side by side, first; any other field either report carries follows."""

PAYLOAD_COLUMNS = ("raw_payload", "payload")
KEPT_PAYLOAD_COLUMNS = ("kept_raw_payload", "kept_payload")
DETAIL_HEADER = ["tier", "action", "reason", "status", "similarity_score", "recorded_at"]
_PAST = {"confirm": "confirmed", "restore": "restored"}
_UNCHANGED: Any = object()


@dataclass(frozen=True)
class ActionOutcome:
    """What a confirm or restore did: ``ok`` and the ``message`` shown in the status line;
    ``result`` is what the callback returned (after awaiting it)."""

    action: Action
    audit_id: str | None
    ok: bool
    message: str
    result: object = None


def _text(value: object, zone: zoneinfo.ZoneInfo) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        shown = value.astimezone(zone) if value.tzinfo else value
        return shown.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _payload(entry: Mapping[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    """The first JSON object among ``columns`` of ``entry`` (a report's raw payload)."""
    for name in columns:
        raw = entry.get(name)
        if isinstance(raw, Mapping):
            return dict(raw)
        if isinstance(raw, str) and raw.strip():
            try:
                parsed = json.loads(raw)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed
    return {}


class AuditBrowser:
    """Dedup audit entries as a paged, filterable table; the selected entry's report next
    to the report it was dropped for or linked to; Confirm and Restore buttons.

    ``entries`` is a frame of ``dedupe_audit_log`` rows (``Replay.audit()``, or the audit
    module's listing); only ``audit_id`` is required, every other column is used when
    present. The kept report is shown from ``kept_<field>`` columns and from a
    ``kept_raw_payload`` (or ``kept_payload``) JSON column when the frame carries them, the
    entry's own report from its columns and its ``raw_payload``; whatever is missing is
    left out and said so.

    ``on_confirm(audit_id)`` and ``on_restore(audit_id)`` do the work (the browser knows no
    stream or database); each may return an awaitable, which is awaited. The status line
    shows the outcome or the error's message, never a traceback, and the browser keeps
    working. A successful decision is shown in the table's ``decision`` column
    (:attr:`decisions`); the entries themselves change only with :meth:`update`, once the
    decision has come back through the log.

    >>> entries = pl.DataFrame(
    ...     {"audit_id": ["a1", "a2"], "tier": ["event_id", "correlation"],
    ...      "source": ["plex", "tautulli"], "status": ["auto_dedupe", "auto_dedupe"]}
    ... )
    >>> def refuse(audit_id):
    ...     raise PermissionError("the audit stream is read-only here")
    >>> browser = AuditBrowser(entries, on_confirm=print, on_restore=refuse)
    >>> browser.set_filter(tier="correlation")["audit_id"].to_list()
    ['a2']
    >>> browser.select("a2")["source"]
    'tautulli'
    >>> asyncio.run(browser.confirm_selected()).message
    a2
    'Confirmed a2'
    >>> asyncio.run(browser.restore_selected()).message
    'Could not restore a2: PermissionError: the audit stream is read-only here'
    """

    def __init__(
        self,
        entries: pl.DataFrame,
        *,
        on_confirm: Callback,
        on_restore: Callback,
        page_size: int = 20,
        tz: str = "UTC",
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self._zone = check_tz(tz)
        self.page_size = page_size
        self.on_confirm = on_confirm
        self.on_restore = on_restore
        self.decisions: dict[str, str] = {}
        """``audit_id`` -> ``"confirmed"`` or ``"restored"``, for the decisions made here."""
        self.last_outcome: ActionOutcome | None = None

        self._filters: dict[str, str | None] = dict.fromkeys(FILTER_COLUMNS)
        self._page = 0
        self._selected: str | None = None
        self._syncing = False
        self._tasks = Tasks()

        self.dropdowns = {
            name: ipywidgets.Dropdown(description=name.capitalize(), options=[("all", None)])
            for name in FILTER_COLUMNS
        }
        self.previous_button = ipywidgets.Button(description="< Previous")
        self.next_button = ipywidgets.Button(description="Next >")
        self.page_label = ipywidgets.Label()
        full_width = ipywidgets.Layout(width="100%")
        self.table = ipywidgets.HTML(layout=full_width)
        self.selector = ipywidgets.Select(description="Entry", options=[], rows=8)
        self.detail = ipywidgets.HTML(layout=full_width)
        self.confirm_button = ipywidgets.Button(
            description="Confirm", button_style="success", tooltip="the dedup was right"
        )
        self.restore_button = ipywidgets.Button(
            description="Restore", button_style="warning", tooltip="undo the dedup"
        )
        self.status = ipywidgets.HTML()
        self.widget = ipywidgets.VBox(
            [
                ipywidgets.HBox(list(self.dropdowns.values())),
                self.table,
                ipywidgets.HBox([self.previous_button, self.page_label, self.next_button]),
                self.selector,
                self.detail,
                ipywidgets.HBox([self.confirm_button, self.restore_button]),
                self.status,
            ]
        )
        for name, dropdown in self.dropdowns.items():
            dropdown.observe(self._on_dropdown(name), names="value")
        self.selector.observe(self._on_selector, names="value")
        self.previous_button.on_click(lambda _: self.previous_page())
        self.next_button.on_click(lambda _: self.next_page())
        self.confirm_button.on_click(lambda _: self._click(self.confirm_selected()))
        self.restore_button.on_click(lambda _: self._click(self.restore_selected()))
        self.update(entries)

    # ----------------------------------------------------------------- state

    @property
    def entries(self) -> pl.DataFrame:
        """All the entries given (unfiltered)."""
        return self._entries

    @property
    def visible(self) -> pl.DataFrame:
        """The entries that pass the filters, in the given order (every page)."""
        return self._visible

    @property
    def filters(self) -> dict[str, str | None]:
        """The current filter per column (``None``: all)."""
        return dict(self._filters)

    @property
    def page(self) -> int:
        """The page shown, from 0."""
        return self._page

    @property
    def pages(self) -> int:
        """How many pages the visible entries fill (at least 1)."""
        return max(1, -(-self._visible.height // self.page_size))

    @property
    def page_entries(self) -> pl.DataFrame:
        """The visible entries on the page shown."""
        return self._visible.slice(self._page * self.page_size, self.page_size)

    @property
    def selected(self) -> str | None:
        """The selected ``audit_id``, if any."""
        return self._selected

    @property
    def selected_entry(self) -> dict[str, Any] | None:
        """The selected entry as a dict of its columns."""
        if self._selected is None:
            return None
        rows = self._entries.filter(pl.col("audit_id") == self._selected).head(1).to_dicts()
        return rows[0] if rows else None

    # ----------------------------------------------------------------- driving it

    def update(self, entries: pl.DataFrame) -> None:
        """Show ``entries`` instead (after decisions came back through the log); filters,
        page and selection are kept where they still apply."""
        if "audit_id" not in entries.columns:
            raise ValueError(
                f"the entries need an 'audit_id' column (dedupe_audit_log rows); got the "
                f"columns {entries.columns}"
            )
        self._entries = entries.with_columns(pl.col("audit_id").cast(pl.String))
        self._syncing = True
        try:
            for name, dropdown in self.dropdowns.items():
                if name in self._entries.columns:
                    values = self._entries[name].drop_nulls().cast(pl.String).unique().sort()
                    choices = [str(v) for v in values]
                    current = self._filters[name]
                    if current is not None and current not in choices:
                        choices.append(current)
                    dropdown.options = [("all", None), *((v, v) for v in choices)]
                    dropdown.value = current
                    dropdown.disabled = False
                    # new options re-render the front end's list; an index that did not
                    # change is not sent again, which left the list showing no choice
                    dropdown.send_state("index")
                else:
                    self._filters[name] = None
                    dropdown.options = [("all", None)]
                    dropdown.disabled = True
        finally:
            self._syncing = False
        self._refilter()

    def set_filter(
        self, *, tier: Any = _UNCHANGED, source: Any = _UNCHANGED, status: Any = _UNCHANGED
    ) -> pl.DataFrame:
        """Filter by tier, source and status (``None``: all; an argument left out keeps its
        filter). Back to the first page; the selection is dropped if it no longer shows.
        Returns :attr:`visible`."""
        for name, value in (("tier", tier), ("source", source), ("status", status)):
            if value is _UNCHANGED:
                continue
            if value is not None and name not in self._entries.columns:
                raise ValueError(f"the entries have no {name!r} column to filter on")
            self._filters[name] = None if value is None else str(value)
        self._syncing = True
        try:
            for name, value in self._filters.items():
                dropdown = self.dropdowns[name]
                known = [v for _, v in dropdown.options]
                if value not in known:
                    dropdown.options = [*dropdown.options, (value, value)]
                dropdown.value = value
        finally:
            self._syncing = False
        self._page = 0
        self._refilter()
        return self._visible

    def show_page(self, page: int) -> pl.DataFrame:
        """Show page ``page`` (from 0; clamped to the pages there are). Returns
        :attr:`page_entries`."""
        self._page = min(max(page, 0), self.pages - 1)
        self._render()
        return self.page_entries

    def next_page(self) -> pl.DataFrame:
        return self.show_page(self._page + 1)

    def previous_page(self) -> pl.DataFrame:
        return self.show_page(self._page - 1)

    def select(self, audit_id: str | None) -> dict[str, Any] | None:
        """Select an entry (``None``: none), turning to its page. It must pass the filters.
        Returns :attr:`selected_entry`."""
        if audit_id is None:
            self._selected = None
            self._render()
            return None
        ids = self._visible["audit_id"].to_list()
        if audit_id not in ids:
            raise ValueError(f"no visible entry has audit_id {audit_id!r} (check the filters)")
        self._selected = audit_id
        self._page = ids.index(audit_id) // self.page_size
        self._render()
        return self.selected_entry

    async def confirm_selected(self) -> ActionOutcome:
        """Call ``on_confirm`` with the selected ``audit_id`` (awaiting what it returns)."""
        return await self._act("confirm", self.on_confirm)

    async def restore_selected(self) -> ActionOutcome:
        """Call ``on_restore`` with the selected ``audit_id`` (awaiting what it returns)."""
        return await self._act("restore", self.on_restore)

    async def wait_idle(self) -> None:
        """Wait for the actions started by button clicks."""
        await self._tasks.wait()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return (
            f"AuditBrowser(entries={self._entries.height}, visible={self._visible.height}, "
            f"page={self._page + 1}/{self.pages}, selected={self._selected!r})"
        )

    # ----------------------------------------------------------------- internals

    def _refilter(self) -> None:
        visible = self._entries
        for name, value in self._filters.items():
            if value is not None and name in visible.columns:
                visible = visible.filter(pl.col(name).cast(pl.String) == value)
        self._visible = visible
        if self._selected is not None and self._selected not in visible["audit_id"].to_list():
            self._selected = None
        self._page = min(self._page, self.pages - 1)
        self._render()

    def _on_dropdown(self, name: str) -> Callable[[Mapping[str, Any]], None]:
        def changed(change: Mapping[str, Any]) -> None:
            if not self._syncing:
                self.set_filter(**{name: change["new"]})

        return changed

    def _on_selector(self, change: Mapping[str, Any]) -> None:
        if not self._syncing:
            self.select(change["new"])

    def _click(self, work: Coroutine[Any, Any, ActionOutcome]) -> None:
        if not self._tasks.launch(work):
            asyncio.run(work)  # a plain Python session: no loop is running

    async def _act(self, action: Action, callback: Callback) -> ActionOutcome:
        audit_id = self._selected
        if audit_id is None:
            outcome = ActionOutcome(action, None, False, f"Select an entry to {action} first.")
            return self._report(outcome)
        self.confirm_button.disabled = self.restore_button.disabled = True
        self.status.value = html.escape(f"{action.capitalize()}ing {audit_id}...")
        try:
            result = callback(audit_id)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            logger.debug("%s of %s failed", action, audit_id, exc_info=True)
            outcome = ActionOutcome(
                action, audit_id, False, f"Could not {action} {audit_id}: {error_line(exc)}"
            )
        else:
            self.decisions[audit_id] = _PAST[action]
            said = f": {result}" if result is not None else ""
            if len(said) > 200:
                said = said[:199] + "…"
            message = f"{_PAST[action].capitalize()} {audit_id}{said}"
            outcome = ActionOutcome(action, audit_id, True, message, result)
        finally:
            self.confirm_button.disabled = self.restore_button.disabled = False
        self._render()
        return self._report(outcome)

    def _report(self, outcome: ActionOutcome) -> ActionOutcome:
        self.last_outcome = outcome
        color = "#1b5e20" if outcome.ok else "#b00020"
        self.status.value = f'<span style="color:{color}">{html.escape(outcome.message)}</span>'
        return outcome

    def _render(self) -> None:
        page = self.page_entries
        self._syncing = True
        try:
            options = [(self._entry_label(row), row["audit_id"]) for row in page.to_dicts()]
            self.selector.options = options
            on_page = [value for _, value in options]
            self.selector.value = self._selected if self._selected in on_page else None
        finally:
            self._syncing = False
        shown = self._visible.height
        self.page_label.value = (
            f"page {self._page + 1} of {self.pages} · {shown} of {self._entries.height} entries"
        )
        self.previous_button.disabled = self._page == 0
        self.next_button.disabled = self._page >= self.pages - 1
        self.table.value = self._table_html(page)
        self.detail.value = self._detail_html()

    def _entry_label(self, row: Mapping[str, Any]) -> str:
        parts = [str(row.get(name)) for name in ("tier", "source", "title") if row.get(name)]
        return " · ".join([str(row["audit_id"])[:12], *parts])

    def _table_html(self, page: pl.DataFrame) -> str:
        columns = [name for name in TABLE_COLUMNS if name in page.columns]
        head = "".join(f"<th>{html.escape(name)}</th>" for name in [*columns, "decision"])
        rows = []
        for row in page.to_dicts():
            chosen = row["audit_id"] == self._selected
            style = ' style="background:#fff3c4"' if chosen else ""
            cells = "".join(
                _cell(_text(row[c], self._zone), TABLE_WIDTHS.get(c, CELL_WIDTH)) for c in columns
            )
            decision = html.escape(self.decisions.get(row["audit_id"], ""))
            rows.append(f"<tr{style}>{cells}<td>{decision}</td></tr>")
        if not rows:
            span = len(columns) + 1
            rows.append(f'<tr><td colspan="{span}">no entry matches the filters</td></tr>')
        return (
            f'{TABLE_STYLE}<div class="audit-scroll"><table class="audit-entries">'
            f"<tr>{head}</tr>{''.join(rows)}</table></div>"
        )

    def _detail_html(self) -> str:
        entry = self.selected_entry
        if entry is None:
            return "<p>Select an entry to compare its report with the kept one.</p>"
        header = " · ".join(
            f"{name}: {html.escape(_text(entry[name], self._zone))}"
            for name in DETAIL_HEADER
            if name in entry and entry[name] is not None
        )
        own = _instants(_payload(entry, PAYLOAD_COLUMNS))
        kept = _instants(_payload(entry, KEPT_PAYLOAD_COLUMNS))
        left = {**own, **{k: v for k, v in entry.items() if k in REPORT_FIELDS}}
        right = dict(kept)
        for name, value in entry.items():
            if name.startswith("kept_") and name not in KEPT_PAYLOAD_COLUMNS:
                right[name.removeprefix("kept_")] = value
        names = [n for n in REPORT_FIELDS if n in left or n in right]
        names += sorted((set(left) | set(right)) - set(names))
        kind = {"drop": "Dropped report", "link": "Linked report"}.get(
            str(entry.get("action")), "This report"
        )
        rows = []
        differing = 0
        for name in names:
            a = _text(left.get(name), self._zone) if name in left else "—"
            b = _text(right.get(name), self._zone) if name in right else "—"
            if a in ("", "—") and b in ("", "—"):
                continue  # neither report says anything: no row
            differs = name in left and name in right and a != b
            differing += differs
            style = ' class="differs"' if differs else ""
            rows.append(
                f"<tr{style}><th>{html.escape(name)}</th>{_cell(a, VALUE_WIDTH)}"
                f"{_cell(b, VALUE_WIDTH)}</tr>"
            )
        note = ""
        if not set(right) - {"event_id", "source", "correlation_key"}:
            note = (
                "<p><em>The kept report's fields are not in these entries: only its ids "
                "are shown.</em></p>"
            )
        said = f"{differing} field{'s' if differing != 1 else ''} differ" if rows else ""
        return (
            f"{TABLE_STYLE}<p><b>{html.escape(str(entry['audit_id'])[:12])}</b> {header}</p>"
            f'<div class="audit-scroll"><table class="audit-compare"><tr><th>'
            f"{html.escape(said)}</th><th>{kind}</th><th>Kept report</th></tr>"
            f"{''.join(rows)}</table></div>{note}"
        )


CELL_WIDTH = 24
"""Characters a table cell shows (the whole value is its tooltip)."""
VALUE_WIDTH = 44
TABLE_WIDTHS = {"audit_id": 12, "reason": 40, "title": 30, "occurred_at": 23}
TABLE_STYLE = (
    "<style>"
    ".audit-scroll{overflow-x:auto;max-width:100%}"
    ".audit-entries,.audit-compare{border-collapse:collapse;font-size:12px;line-height:1.3}"
    ".audit-entries td,.audit-entries th,.audit-compare td,.audit-compare th"
    "{white-space:nowrap;padding:2px 8px;text-align:left;border-bottom:1px solid #e0e0e0}"
    ".audit-compare tr.differs td,.audit-compare tr.differs th{background:#fde2e1}"
    ".audit-compare th{font-weight:600}"
    "</style>"
)
"""Compact tables, one line a row, that scroll sideways rather than wrap."""


def _instants(report: dict[str, Any]) -> dict[str, Any]:
    """A report's ISO 8601 times (as JSON payloads carry them) as datetimes, so both
    reports show them alike and only a real difference is marked."""
    result = dict(report)
    for name, value in report.items():
        if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and "T" in value:
            try:
                result[name] = datetime.fromisoformat(value)
            except ValueError:
                pass
    return result


def _cell(text: str, width: int) -> str:
    """A table cell showing at most ``width`` characters; the whole text is its tooltip."""
    shown = text if len(text) <= width else text[: width - 1] + "…"
    title = f' title="{html.escape(text)}"' if shown != text else ""
    return f"<td{title}>{html.escape(shown)}</td>"


__all__ = ["ActionOutcome", "AuditBrowser"]
