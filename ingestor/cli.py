"""``ingestor``: the command line. Parses arguments, presents errors; ``app.py`` (``run``) and
:mod:`ingestor.commands` (the others) do the work."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ingestor import app
from ingestor.commands.demo import run_demo
from ingestor.commands.dlq import dlq_command
from ingestor.commands.erase import erase_command
from ingestor.commands.identity import identity_list_command, identity_publish_command
from ingestor.commands.imports import import_history_command, import_tautulli_command
from ingestor.commands.replay import replay_command
from ingestor.commands.simulate import simulate_command
from ingestor.commands.status import format_status, status_command
from ingestor.config import Settings
from ingestor.detection.config import DetectionConfig
from ingestor.errors import ConfigError, IngestorError
from ingestor.sources.config import SourcesConfig

if TYPE_CHECKING:  # loaded by demo and simulate only: `run` never imports the simulator
    from ingestor import simulation as simulator

log = logging.getLogger("ingestor")


def _iso_instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +01:00)")
    return value


def _simulation_args(parser: argparse.ArgumentParser, users: int, days: int) -> None:
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--users", type=int, default=users, help=f"users (default {users})")
    parser.add_argument("--days", type=int, default=days, help=f"days (default {days})")
    parser.add_argument(
        "--base-date",
        type=_iso_instant,
        default=None,  # the simulator's DEFAULT_BASE_DATE
        help="first simulated day, ISO 8601 with zone (default 2026-01-05T00:00Z)",
    )


def _simulation_config(args: argparse.Namespace) -> simulator.SimulationConfig:
    from ingestor import simulation as simulator

    if args.users < 1 or args.days < 1:
        raise IngestorError("--users and --days must be at least 1")
    base_date = simulator.DEFAULT_BASE_DATE if args.base_date is None else args.base_date
    return simulator.SimulationConfig(
        seed=args.seed, users=args.users, days=args.days, base_date=base_date
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingestor",
        description="Event-sourced playback ingestor: sources -> NATS JetStream -> DuckDB. "
        "Configured by environment variables (see the README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="project the stream headless until SIGTERM/SIGINT")
    demo = sub.add_parser("demo", help="embedded NATS + simulator + projection, checked")
    _simulation_args(demo, users=20, days=7)
    simulate = sub.add_parser("simulate", help="generate the simulated feed")
    _simulation_args(simulate, users=20, days=7)
    simulate.add_argument("--out", type=Path, help="write JSON lines here instead of publishing")
    simulate.add_argument("--truth", type=Path, help="write the ground truth here")
    replay = sub.add_parser("replay", help="rebuild the projection from the stream")
    replay.add_argument("--output", type=Path, required=True, help="new DuckDB file to write")
    replay.add_argument("--until", type=_iso_instant, help="ISO 8601 instant with zone, inclusive")
    replay.add_argument("--clock", choices=("recorded", "occurred"), default="recorded")
    status = sub.add_parser("status", help="stream, checkpoint, lag, DLQ, playbacks")
    status.add_argument("--json", action="store_true", help="print JSON")
    imports = sub.add_parser("import", help="import history from before install")
    imports.add_argument(
        "kind",
        choices=("tautulli-db", "plex-history", "playback-reporting", "jellystat"),
        help="what to import",
    )
    imports.add_argument(
        "path",
        type=Path,
        nargs="?",
        help="the file: tautulli.db, playback_reporting.db, a Jellystat backup .json",
    )
    imports.add_argument("--server-id", help="the server id, if the file does not say")
    imports.add_argument("--url", help="plex-history: the Plex server (default PLEX_URL)")
    imports.add_argument("--token", help="plex-history: X-Plex-Token (default PLEX_TOKEN)")
    imports.add_argument("--owner-id", help="plex-history: the owner's plex.tv id (PLEX_OWNER_ID)")
    imports.add_argument(
        "--until", type=_iso_instant, help="plex-history: only entries viewed before this"
    )
    imports.add_argument(
        "--tz", help="playback-reporting: the Jellyfin server's time zone, e.g. Europe/Paris (UTC)"
    )
    dlq = sub.add_parser("dlq", help="dead letters: list, retry, purge")
    dlq.add_argument("action", choices=("list", "retry", "purge"))
    dlq.add_argument("--seq", type=int, help="only this dead letter (its DLQ sequence)")
    identity = sub.add_parser("identity", help="one person, several accounts: merge, unmerge, list")
    actions = identity.add_subparsers(dest="identity_action", required=True, metavar="ACTION")
    for name, doc in (
        ("merge", "publish: these accounts are one person (an account moves from any other)"),
        ("unmerge", "publish: these accounts (none given: all) are no longer the person"),
    ):
        act = actions.add_parser(name, help=doc)
        act.add_argument("--person", required=True, help="the person's name (its id)")
        # a pair of arguments, never "SERVER:USER" split on ':' (no source forbids ':' in an id)
        act.add_argument(
            "--account",
            nargs=2,
            action="append",
            default=[],
            metavar=("SERVER_ID", "USER_ID"),
            help="one account, as its server id and its user id on that server (repeat it)",
        )
        act.add_argument("--by", default="", help="who decided (kept with the record)")
        act.add_argument("--notes", default="", help="why (kept with the record)")
    listing = actions.add_parser("list", help="the accounts merged into each person now")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    erase = sub.add_parser(
        "erase", help="forget a user: delete their events from the log, archive and projection"
    )
    erase.add_argument("--user", required=True, help="the user's id on their server")
    erase.add_argument(
        "--server", help="the server's id (needed when the user id is on several servers)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"ingestor: {problem}", file=sys.stderr)
        return 2
    settings.configure_logging()
    try:
        return asyncio.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"ingestor: {problem}", file=sys.stderr)
        return 2
    except (IngestorError, OSError) as exc:
        print(f"ingestor: {exc}", file=sys.stderr)
        return 1


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "run":
        await app.run_service(
            settings, SourcesConfig.from_env(), detection=DetectionConfig.from_env(os.environ)
        )
        return 0
    if command == "demo":
        report = await run_demo(settings, _simulation_config(args))
        return 0 if report.ok else 1
    if command == "simulate":
        return await simulate_command(
            settings, _simulation_config(args), out_path=args.out, truth_path=args.truth
        )
    if command == "replay":
        report = await replay_command(settings, args.output, until=args.until, clock=args.clock)
        print(
            f"replayed {report.messages:,} messages ({report.applied:,} events applied, "
            f"{report.rejected:,} undecodable) up to seq {report.last_seq:,} into {args.output} "
            f"in {report.seconds:.1f}s: {report.counts['playbacks']:,} playbacks"
        )
        return 0
    if command == "status":
        status = await status_command(settings)
        print(json.dumps(status, indent=2) if args.json else format_status(status))
        return 0
    if command == "import" and args.kind != "tautulli-db":
        return await import_history_command(settings, args)
    if command == "import":
        if args.path is None:
            raise IngestorError("import tautulli-db needs the database's path")
        return await import_tautulli_command(settings, args.path, server_id=args.server_id)
    if command == "dlq":
        return await dlq_command(settings, args.action, args.seq)
    if command == "identity":
        if args.identity_action == "list":
            return await identity_list_command(settings, as_json=args.json)
        if args.identity_action == "merge" and not args.account:
            raise IngestorError("identity merge needs at least one --account SERVER_ID USER_ID")
        accounts = [(server.strip(), user.strip()) for server, user in args.account]
        return await identity_publish_command(
            settings, args.identity_action, args.person, accounts, by=args.by, notes=args.notes
        )
    if command == "erase":
        return await erase_command(settings, args.user, args.server)
    raise AssertionError(command)


if __name__ == "__main__":
    sys.exit(main())
