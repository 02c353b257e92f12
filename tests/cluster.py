"""A real three-node ``nats-server`` cluster on loopback, for tests.

Three processes, each with JetStream and its own store, joined by cluster routes: a stream
with three replicas survives the loss of one node (the other two elect a new leader), and
stops taking writes when two are gone (no majority).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats

from ingestor.nats.connection import wait_jetstream
from ingestor.nats.server import EmbeddedServer
from tests.conftest import free_port

CLUSTER_NAME = "media"


class NatsCluster:
    """``size`` JetStream servers routed to each other; nodes can be killed and restarted."""

    def __init__(self, root: Path, size: int = 3) -> None:
        ports = [free_port() for _ in range(size)]
        routes = [free_port() for _ in range(size)]
        route_urls = ",".join(f"nats://127.0.0.1:{port}" for port in routes)
        self.nodes = [
            EmbeddedServer(
                "127.0.0.1",
                port,
                root / f"node-{i}",
                server_name=f"node-{i}",
                extra_args=[
                    "--cluster_name",
                    CLUSTER_NAME,
                    "--cluster",
                    f"nats://127.0.0.1:{route}",
                    "--routes",
                    route_urls,
                ],
            )
            for i, (port, route) in enumerate(zip(ports, routes, strict=True))
        ]

    @property
    def url(self) -> str:
        """``NATS_URL`` listing every node."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> EmbeddedServer:
        return next(node for node in self.nodes if node.server_name == name)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        asyncio.run(self.wait_for_meta_leader())

    def kill(self, name: str) -> None:
        """``kill -9`` one node: no flush, no goodbye to its peers."""
        process = self.node(name).process
        assert process is not None and process.poll() is None, f"{name} is not running"
        process.send_signal(signal.SIGKILL)
        process.wait()

    def restart(self, name: str) -> None:
        self.node(name).start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    async def wait_for_meta_leader(self, timeout: float = 30.0) -> None:
        """JetStream's cluster answers API requests once its nodes elected a meta leader."""
        nc = await nats.connect(servers=self.url.split(","), connect_timeout=2)
        try:
            await wait_jetstream(nc.jetstream(timeout=2), timeout)
        finally:
            await nc.close()


@contextmanager
def nats_cluster(root: Path, size: int = 3) -> Iterator[NatsCluster]:
    cluster = NatsCluster(root, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
