"""Fuzz every way bad input enters the ingestor, thousands of inputs per target (issue 12).

Starts a real nats-server, the real ingestor as a process (Plex and Jellyfin webhooks on,
its Jellyfin WebSocket on a fake server), a fake Tautulli read by the real TautulliSync, and
feeds each target hypothesis-generated inputs (the documented formats, mutated): see
``tests/fuzz/harness.py`` for the oracles and ``bench/README.md`` for what is printed.

    .venv/bin/python bench/fuzz.py --examples 2000            # 10,000 inputs in all
    .venv/bin/python bench/fuzz.py --examples 200 --targets stream,plex-webhook
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz.harness import Harness
from tests.fuzz.runs import RUNS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="inputs per target")
    parser.add_argument("--targets", default=",".join(RUNS), help="comma-separated targets")
    parser.add_argument("--burst", type=int, default=50, help="inputs between valid checks")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in RUNS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {list(RUNS)}")
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
    # the in-process Tautulli sync logs what it skips: to a file, not over the figures
    logging.basicConfig(filename=workdir / "bench.log", level=logging.INFO)
    harness = Harness(workdir, burst=args.burst, strict=False)
    started = time.monotonic()
    seconds: dict[str, float] = {}
    try:
        harness.start()
        for name in targets:
            print(f"fuzzing {name}: {args.examples:,} inputs...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            RUNS[name](harness, args.examples)
            seconds[name] = time.monotonic() - t0
    finally:
        harness.close()
    tallies = [harness.tallies[name] for name in targets if name in harness.tallies]
    print(
        f"fuzz run: {sum(t.inputs for t in tallies):,} inputs in "
        f"{time.monotonic() - started:.0f} s (workdir {workdir})"
    )
    for tally in tallies:
        print(f"  {tally.line()}  [{seconds.get(tally.target, 0):.0f} s]")
    for tally in tallies:
        print(
            f"{tally.target} mutations: "
            + ", ".join(
                f"{k} {v}" for k, v in sorted(tally.mutations.items(), key=lambda kv: -kv[1])
            )
        )
    failures = [(t.target, f) for t in tallies for f in t.failures]
    print(f"failures: {len(failures)}")
    for target, failure in failures[:20]:
        print(f"--- {target}: {failure[:3000]}")
    totals = {
        "inputs": sum(t.inputs for t in tallies),
        "crashes": sum(t.crashes for t in tallies),
        "hangs": sum(t.hangs for t in tallies),
        "5xx": sum(t.server_errors for t in tallies),
    }
    print("total: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "totals": totals,
                    "seconds": seconds,
                    "targets": [{**vars(t), "failures": t.failures[:50]} for t in tallies],
                },
                indent=2,
            )
        )
    if not args.keep and not failures:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
