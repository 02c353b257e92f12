"""One fuzz harness (nats-server, the ingestor as a process, fake Jellyfin and Tautulli) for
the whole fuzz session: starting it costs seconds, each input milliseconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.harness import Harness


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz"), burst=25, strict=True).start()
    try:
        yield h
    finally:
        h.close()
