"""Query the live projection of a running ingestor, safely, while it keeps ingesting.

DuckDB lets one process write a file, and no other process may open it while the writer holds
it, not even read-only. So a notebook does not open ``analytics.duckdb``: it sends SQL to the
ingestor (``POST /query`` on its HTTP port), which runs it on a fresh cursor inside one
transaction. DuckDB's MVCC gives that transaction a snapshot: the answer is consistent as of
one stream sequence (reported with it), the ingestor's batches keep committing meanwhile, and
neither waits for the other. Rows come back as an Arrow IPC stream, so large answers cost no
JSON.

Only loopback clients may query unless the ingestor has ``QUERY_TOKEN`` set; pass the same
token here.

Examples::

    live = LiveProjection("http://127.0.0.1:3857")
    result = live.sql("SELECT user_id, count(*) AS plays FROM playback_events GROUP BY 1")
    result.frame          # a polars DataFrame
    result.checkpoint_seq # the stream sequence the answer is consistent as of
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from workbench.errors import QueryError


@dataclass(frozen=True)
class LiveResult:
    frame: pl.DataFrame
    checkpoint_seq: int


class LiveProjection:
    """A read-only SQL view of a running ingestor's projection."""

    def __init__(
        self, url: str = "http://127.0.0.1:3857", *, token: str | None = None, timeout: float = 60
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def sql(self, query: str) -> LiveResult:
        """Run one SELECT; the rows and the checkpoint they are consistent as of."""
        request = urllib.request.Request(f"{self.url}/query", data=query.encode(), method="POST")
        request.add_header("Content-Type", "text/plain; charset=utf-8")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                seq = int(response.headers["X-Checkpoint-Seq"])
                table = pa.ipc.open_stream(response.read()).read_all()
        except urllib.error.HTTPError as exc:
            raise QueryError(f"{exc.code}: {exc.read().decode(errors='replace')}") from None
        except urllib.error.URLError as exc:
            raise QueryError(f"no ingestor answers at {self.url}: {exc.reason}") from None
        return LiveResult(pl.from_arrow(table), seq)

    def checkpoint(self) -> int:
        """The stream sequence the live projection has committed up to (one tiny query)."""
        return self.sql("SELECT 1 AS one").checkpoint_seq


@dataclass(frozen=True)
class RunningIngestor:
    """An ingestor that answers on its HTTP port and holds a given projection file."""

    http_url: str
    nats_url: str | None
    live: LiveProjection


def ingestor_holding(
    db_path: Path, http_url: str, *, token: str | None = None, timeout: float = 2
) -> RunningIngestor | None:
    """The ingestor answering at ``http_url`` if it is the one that holds ``db_path`` (its
    ``/status`` names the file), else None (nothing answers, or another ingestor does)."""
    url = http_url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/status", timeout=timeout) as response:
            status = json.loads(response.read())
    except (OSError, ValueError):
        return None
    held = status.get("duckdb_path") if isinstance(status, dict) else None
    if not held or Path(held).resolve() != Path(db_path).resolve():
        return None
    nats_url = status.get("nats_url") if status.get("mode") != "nats-off" else None
    return RunningIngestor(url, nats_url, LiveProjection(url, token=token))
