"""The ingestor's commands, one module each: ``status``, ``demo``, ``simulate``, ``replay``,
``imports`` (``ingestor import``), ``dlq``, ``identity`` and ``erase``.

``cli.py`` parses arguments and presents errors; a command does the work, with the parts the
running service uses too (opening the projection, the pipeline, NATS) from ``ingestor.app``.
"""

from __future__ import annotations

from collections.abc import Callable

Out = Callable[[str], None]
"""Where a command writes its lines (``print`` by default; tests collect them)."""
