"""Detection alerts: what the rules found, filtered and counted.

The detector (:mod:`ingestor.detection.detector`) publishes every finding to the stream as an
:class:`ingestor.records.Alert`, and the projection writes one ``detection_alerts`` row per
``alert_id``. So a replay holds the same alerts as the live projection, and every function
here reads either: a :class:`~workbench.replay.Replay`, an
:class:`~ingestor.projection.Projection`, or a DuckDB connection to one.

Times: ``occurred_at`` is the event time of the report that raised the alert (when it
happened); ``recorded_at`` and ``seq`` say when the stream stored the alert. ``details`` is
the rule's figures as a JSON object (:func:`details` decodes one).

>>> import tempfile
>>> from pathlib import Path
>>> tmp = tempfile.TemporaryDirectory()
>>> db = _demo(Path(tmp.name))
>>> alerts(db).select("rule", "severity", "username").rows()
[('impossible_travel', 'critical', 'bruno'), ('concurrent_streams', 'warning', 'ana')]
>>> counts(db).rows()
[('impossible_travel', 'critical', 1, 1), ('concurrent_streams', 'warning', 1, 1)]
>>> db.close(); tmp.cleanup()
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from ingestor.detection.config import RULES
from ingestor.projection import Projection
from ingestor.records import SEVERITIES
from workbench.db import ProjectionSource
from workbench.db import choices as _choices
from workbench.db import query as _query
from workbench.replay import aware_utc

Source = ProjectionSource
"""What the functions here read: a replay, a projection, or a connection to one."""

COLUMNS = [
    "alert_id",
    "occurred_at",
    "rule",
    "severity",
    "server_id",
    "user_id",
    "username",
    "message",
    "event_ids",
    "details",
    "seq",
    "recorded_at",
]
"""The columns :func:`alerts` returns, in this order."""

_SEVERITY_RANK = "CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END"


def alerts(
    db: Source,
    *,
    rule: str | Sequence[str] | None = None,
    severity: str | Sequence[str] | None = None,
    user: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> pl.DataFrame:
    """Alerts in the order they happened (``occurred_at``, then ``seq``), filtered.

    ``rule`` and ``severity``: one value or several (see
    :data:`ingestor.detection.config.RULES`, ``info``/``warning``/``critical``). ``user``: a
    ``user_id`` or a ``username``. ``since`` and ``until`` (inclusive, timezone-aware, a
    datetime or ISO 8601 text) bound ``occurred_at``, the event time.

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> db = _demo(Path(tmp.name))
    >>> alerts(db, severity="critical")["message"].to_list()
    ['bruno was in London, GB 20 min before streaming from New York, US, 5570 km away']
    >>> alerts(db, user="ana", since="2026-01-05T21:00:00Z").height
    1
    >>> alerts(db, rule=["geo_restriction"]).height
    0
    >>> db.close(); tmp.cleanup()
    """
    params: dict[str, Any] = {
        "rules": _choices("rule", rule, RULES),
        "severities": _choices("severity", severity, SEVERITIES),
        "user": user,
        "since": aware_utc(since, "since") if since is not None else None,
        "until": aware_utc(until, "until") if until is not None else None,
    }
    sql = f"""
        SELECT {", ".join(COLUMNS)} FROM detection_alerts
        WHERE ($rules IS NULL OR list_contains($rules, rule))
          AND ($severities IS NULL OR list_contains($severities, severity))
          AND ($user IS NULL OR user_id = $user OR username = $user)
          AND ($since IS NULL OR occurred_at >= $since)
          AND ($until IS NULL OR occurred_at <= $until)
        ORDER BY occurred_at, seq, alert_id
    """
    return _query(db, sql, params)


def counts(
    db: Source,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> pl.DataFrame:
    """Alerts per rule and severity: ``rule``, ``severity``, ``alerts``, ``users`` (distinct
    users alerted), most severe first, then most frequent. ``since``/``until`` as in
    :func:`alerts`.

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> db = _demo(Path(tmp.name))
    >>> counts(db, since="2026-01-05T21:00:00Z").rows()
    [('concurrent_streams', 'warning', 1, 1)]
    >>> db.close(); tmp.cleanup()
    """
    params = {
        "since": aware_utc(since, "since") if since is not None else None,
        "until": aware_utc(until, "until") if until is not None else None,
    }
    sql = f"""
        SELECT rule, severity, count(*) AS alerts,
               count(DISTINCT (server_id, user_id)) AS users
        FROM detection_alerts
        WHERE ($since IS NULL OR occurred_at >= $since)
          AND ($until IS NULL OR occurred_at <= $until)
        GROUP BY rule, severity
        ORDER BY {_SEVERITY_RANK}, alerts DESC, rule
    """
    return _query(db, sql, params)


def by_user(db: Source) -> pl.DataFrame:
    """Alerts per user: ``server_id``, ``user_id``, ``username``, ``alerts``, ``critical``,
    ``warning``, ``info`` and the ``rules`` that fired, most critical users first.

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> db = _demo(Path(tmp.name))
    >>> by_user(db).select("username", "alerts", "critical", "rules").rows()
    [('bruno', 1, 1, ['impossible_travel']), ('ana', 1, 0, ['concurrent_streams'])]
    >>> db.close(); tmp.cleanup()
    """
    sql = """
        SELECT server_id, user_id, max(username) AS username, count(*) AS alerts,
               count(*) FILTER (severity = 'critical') AS critical,
               count(*) FILTER (severity = 'warning') AS warning,
               count(*) FILTER (severity = 'info') AS info,
               list(DISTINCT rule ORDER BY rule) AS rules
        FROM detection_alerts
        GROUP BY server_id, user_id
        ORDER BY critical DESC, warning DESC, alerts DESC, user_id
    """
    return _query(db, sql, {})


def details(db: Source, alert_id: str) -> dict[str, Any]:
    """The rule's figures of one alert, decoded (``KeyError`` for an unknown id).

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> db = _demo(Path(tmp.name))
    >>> details(db, alerts(db, rule="impossible_travel")["alert_id"][0])["speed_kmh"]
    16710.0
    >>> db.close(); tmp.cleanup()
    """
    frame = _query(
        db, "SELECT details FROM detection_alerts WHERE alert_id = $id", {"id": alert_id}
    )
    if frame.height == 0:
        raise KeyError(f"no alert {alert_id!r}")
    text = frame["details"][0]
    return json.loads(text) if text else {}


# --------------------------------------------------------------------------- helpers


def _demo(directory: Path) -> Projection:
    """A projection holding two alerts, written through the ingestor's own pipeline (for the
    examples above)."""
    from datetime import UTC

    from ingestor.dedup import DedupIndex
    from ingestor.pipeline import Message, Pipeline
    from ingestor.records import Alert, encode_record

    at = datetime(2026, 1, 5, 20, 40, tzinfo=UTC)
    found = [
        Alert(
            alert_id="9f1c",
            rule="impossible_travel",
            severity="critical",
            occurred_at=at,
            server_id="srv",
            user_id="12",
            username="bruno",
            message="bruno was in London, GB 20 min before streaming from New York, US, "
            "5570 km away",
            details={"distance_km": 5570.22, "speed_kmh": 16710.0},
        ),
        Alert(
            alert_id="3b07",
            rule="concurrent_streams",
            severity="warning",
            occurred_at=at.replace(hour=21),
            server_id="srv",
            user_id="7",
            username="ana",
            message="ana has 4 streams at once (limit 3)",
            details={"active_streams": 4, "limit": 3},
        ),
    ]
    projection = Projection(directory / "alerts-demo.duckdb")
    messages = [
        Message(seq, at, encode_record(alert), alert.subject)
        for seq, alert in enumerate(found, start=1)
    ]
    Pipeline(projection, DedupIndex()).process(messages)
    return projection


__all__ = ["COLUMNS", "alerts", "by_user", "counts", "details"]
