"""Report benchmark: how long does ``workbench report`` take to render the overview over a
large projection?

The target: the overview of a 100,000-playback dataset renders in under 15 s on 2 cores
(issue 15, with its tiles and styled tables; issue 5 asked for 30 s). What is measured, in one run:

1. **build** (a figure, not the target): the simulator (``ingestor.simulation``) makes
   a feed of ``--users`` people over ``--days`` days (default: enough users for
   ``--playbacks`` playbacks over 182 days, at the simulator's ~2.4 playbacks per user-day);
   the real write path (:class:`ingestor.pipeline.Pipeline`, dedup included) projects it
   into ``<tmp>/data/analytics.duckdb``, in batches of ``--batch`` messages, each message
   recorded when its latest event had happened (as :func:`workbench.replay.simulated_log`
   does). The data directory has no archive, so a notebook's ``open_data_dir`` reads the
   file (mode ``file``), as it would for an ingestor that is not running.
2. **report**: ``workbench report NOTEBOOK -p data_dir <tmp>/data --out <tmp>/out -q`` as a
   separate process (the installed console script when there is one, else ``python -m
   workbench.cli``), ``--runs`` times; the wall time of each process, from spawn to exit,
   kernel start and HTML included. Each run must exit with 0 and write both files.
3. from the last run's executed notebook: the code cells and each cell's own duration
   (papermill's), the slowest listed in the details; the HTML's size, its embedded images,
   and whether it references anything outside itself (it must not).

The last lines printed are the figures; ``--json`` writes them with the details. Exit status:
0 when the measurement completed (target met or not), 1 when something failed.

Run from the project root: ``.venv/bin/python bench/report.py`` (``--notebook PATH`` for
another notebook, ``-p NAME VALUE`` for its other parameters).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import nbformat

from ingestor.dedup import DedupIndex
from ingestor.events import encode_event
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import Projection
from ingestor.simulation import SimulationConfig, simulate
from workbench.report import external_references

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOK = ROOT / "notebooks" / "overview.ipynb"
PLAYBACKS_PER_USER_DAY = 2.4  # the simulator's rate (4,862 playbacks from 11 users x 182 days)
TARGET_SECONDS = 15.0


@dataclass
class Dataset:
    data_dir: str
    users: int
    days: int
    seed: int
    events: int = 0
    playbacks: int = 0
    simulate_seconds: float = 0.0
    project_seconds: float = 0.0
    db_megabytes: float = 0.0


@dataclass
class Run:
    seconds: float
    exit_status: int
    # from spawn to each progress line: "executing", "writing" (HTML), "wrote"
    phases: dict[str, float] = field(default_factory=dict)

    def breakdown(self) -> str:
        marks = [("start", 0.0), *self.phases.items(), ("exit", self.seconds)]
        names = {"executing": "startup", "writing": "execute", "wrote": "html", "exit": "exit"}
        return ", ".join(
            f"{names.get(mark, mark)} {end - begin:.1f} s"
            for (_, begin), (mark, end) in itertools.pairwise(marks)
        )


@dataclass
class Figures:
    notebook: str
    dataset: Dataset
    runs: list[Run] = field(default_factory=list)
    cells: int = 0
    slowest_cells: list[tuple[int, float, str]] = field(default_factory=list)
    html_kilobytes: float = 0.0
    embedded_images: int = 0
    external_references: list[str] = field(default_factory=list)


def build_dataset(data_dir: Path, users: int, days: int, seed: int, batch: int) -> Dataset:
    """Simulate a feed and project it through the real pipeline into a DuckDB file."""
    dataset = Dataset(str(data_dir), users, days, seed)
    started = time.perf_counter()
    sim = simulate(SimulationConfig(seed=seed, users=users, days=days))
    dataset.simulate_seconds = time.perf_counter() - started
    dataset.events = len(sim.events)
    data_dir.mkdir(parents=True, exist_ok=True)
    db_path = data_dir / "analytics.duckdb"
    started = time.perf_counter()
    projection = Projection(db_path)
    try:
        pipeline = Pipeline(projection, DedupIndex())
        recorded = datetime.min.replace(tzinfo=UTC)
        for first in range(0, len(sim.events), batch):
            messages = []
            for seq, event in enumerate(sim.events[first : first + batch], start=first + 1):
                recorded = max(recorded, event.occurred_at)
                messages.append(Message(seq, recorded, encode_event(event), event.subject))
            outcome = pipeline.process(messages)
            if outcome.rejected:
                raise RuntimeError(f"the pipeline rejected {len(outcome.rejected)} messages")
            done = min(first + batch, len(sim.events))
            print(f"projected {done:,}/{len(sim.events):,} events", file=sys.stderr, end="\r")
    finally:
        projection.close()
    print(file=sys.stderr)
    dataset.project_seconds = time.perf_counter() - started
    with duckdb.connect(str(db_path), read_only=True) as con:
        dataset.playbacks = con.execute("SELECT count(*) FROM playback_events").fetchall()[0][0]
    dataset.db_megabytes = db_path.stat().st_size / 2**20
    return dataset


def existing_dataset(data_dir: Path) -> Dataset:
    """An earlier build (``--data-dir``): its counts, no timings."""
    db_path = data_dir / "analytics.duckdb"
    with duckdb.connect(str(db_path), read_only=True) as con:
        playbacks = con.execute("SELECT count(*) FROM playback_events").fetchall()[0][0]
        events = con.execute("SELECT count(*) FROM media_events").fetchall()[0][0]
    dataset = Dataset(str(data_dir), users=0, days=0, seed=0, events=events, playbacks=playbacks)
    dataset.db_megabytes = db_path.stat().st_size / 2**20
    return dataset


def workbench_command() -> list[str]:
    script = Path(sys.executable).parent / "workbench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "workbench.cli"]


def render_once(notebook: Path, out: Path, parameters: list[tuple[str, str]]) -> Run:
    """One ``workbench report`` process; its progress lines time the phases."""
    command = [*workbench_command(), "report", str(notebook), "--out", str(out)]
    for name, value in parameters:
        command += ["-p", name, value]
    started = time.perf_counter()
    phases: dict[str, float] = {}
    lines: list[str] = []
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            words = line.split()
            if len(words) > 1 and words[0] == "workbench:":
                phases.setdefault(words[1], time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        print("".join(lines), file=sys.stderr)
    return Run(seconds, process.returncode, phases)


def inspect_output(figures: Figures, ipynb: Path, html: Path) -> None:
    executed = nbformat.read(ipynb, as_version=4)
    code = [(i, c) for i, c in enumerate(executed.cells) if c.cell_type == "code"]
    figures.cells = len(code)
    durations = []
    for index, cell in code:
        seconds = cell.metadata.get("papermill", {}).get("duration") or 0.0
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        durations.append((index, round(seconds, 2), first[:60]))
    figures.slowest_cells = sorted(durations, key=lambda d: -d[1])[:5]
    page = html.read_text(encoding="utf-8")
    figures.html_kilobytes = len(page.encode()) / 1024
    figures.embedded_images = page.count('src="data:image/')
    figures.external_references = external_references(page)


def versions() -> dict[str, str]:
    names = ["papermill", "nbconvert", "ipykernel", "altair", "vl-convert-python", "duckdb"]
    found = {name: importlib.metadata.version(name) for name in names}
    return {"python": platform.python_version(), **found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    parser.add_argument("--playbacks", type=int, default=100_000, help="about this many")
    parser.add_argument("--days", type=int, default=182)
    parser.add_argument("--users", type=int, help="default: from --playbacks and --days")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=20_000, help="messages per projection")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-param", default="data_dir", help="the notebook's parameter")
    parser.add_argument(
        "-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), dest="params"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="use this data directory: its analytics.duckdb if it has one (no build), else "
        "build into it and keep it",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not args.notebook.is_file():
        print(f"bench/report.py: no notebook at {args.notebook}", file=sys.stderr)
        return 1
    users = args.users or math.ceil(args.playbacks / (PLAYBACKS_PER_USER_DAY * args.days))

    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        print(f"cores: {os.cpu_count()}, {platform.processor() or platform.machine()}")
        print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
        data_dir = (args.data_dir or tmp / "data").resolve()
        if (data_dir / "analytics.duckdb").exists():
            dataset = existing_dataset(data_dir)
            print(f"using {data_dir} as it is (build not timed)", flush=True)
        else:
            print(f"building: {users} users x {args.days} days (seed {args.seed})", flush=True)
            dataset = build_dataset(data_dir, users, args.days, args.seed, args.batch)
        figures = Figures(notebook=str(args.notebook), dataset=dataset)
        parameters = [(args.data_param, str(data_dir)), *map(tuple, args.params)]
        out = tmp / "out"
        for number in range(1, args.runs + 1):
            run = render_once(args.notebook, out, parameters)
            figures.runs.append(run)
            print(
                f"run {number}: {run.seconds:.1f} s ({run.breakdown()}; exit {run.exit_status})",
                flush=True,
            )
            if run.exit_status != 0:
                print("bench/report.py: workbench report failed", file=sys.stderr)
                return 1
        stem = args.notebook.stem
        inspect_output(figures, out / f"{stem}.ipynb", out / f"{stem}.html")
        report_seconds = statistics.median(run.seconds for run in figures.runs)

        print("details:")
        print(f"  notebook: {args.notebook}")
        if dataset.users:
            print(
                f"  dataset: {dataset.users} users x {dataset.days} days, {dataset.events:,} "
                f"events simulated in {dataset.simulate_seconds:.1f} s, projected through the "
                f"pipeline in {dataset.project_seconds:.1f} s"
            )
        else:
            print(f"  dataset: {dataset.data_dir} reused, {dataset.events:,} events")
        print(f"  DuckDB file: {dataset.db_megabytes:.0f} MB")
        print(f"  runs: {', '.join(f'{r.seconds:.1f} s' for r in figures.runs)}")
        print("  slowest cells (index, seconds, first line):")
        for index, seconds, first in figures.slowest_cells:
            print(f"    {index:>3} {seconds:>6.2f}  {first}")
        print(
            f"  html: {figures.html_kilobytes:,.0f} KB, {figures.embedded_images} embedded "
            f"images, external references: {figures.external_references or 'none'}"
        )
        build_seconds = dataset.simulate_seconds + dataset.project_seconds
        met = report_seconds < TARGET_SECONDS and not figures.external_references
        print(f"playbacks: {dataset.playbacks:,}")
        built = f"{build_seconds:.1f} s" if dataset.users else "not timed (--data-dir reused)"
        print(f"dataset build: {built}")
        print(f"report: {report_seconds:.1f} s (median of {len(figures.runs)})")
        print(f"cells: {figures.cells}")
        print(f"target: < {TARGET_SECONDS:.0f} s, self-contained: {'met' if met else 'NOT met'}")
        if args.json:
            payload: dict[str, Any] = {
                "playbacks": dataset.playbacks,
                "build_seconds": build_seconds,
                "report_seconds": report_seconds,
                "cells": figures.cells,
                "target_met": met,
                "details": asdict(figures),
                "environment": {"cores": os.cpu_count(), **versions()},
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=2))
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
