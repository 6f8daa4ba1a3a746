"""`clipfarm-fusion detect-changes` and `refuse`: notice inputs that changed under the same key, and
fuse a strategy's videos again on purpose (`admin.changes`, `admin.refusal`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clipfarm_fusion.admin import changes, refusal
from clipfarm_fusion.cli.argtypes import parsed_by, positive
from clipfarm_fusion.cli.exits import EXIT_OK
from clipfarm_fusion.cli.reading import location_arguments
from clipfarm_fusion.cli.run_command import add_run_arguments, config_from_args, run_and_report
from clipfarm_fusion.config import STRATEGY_NAMES, resolve_bucket
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.stores import refusals, s3io

COMMANDS = ("detect-changes", "refuse")
log = logging.getLogger(__name__)


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_detect_changes(commands)
    _add_refuse(commands)


def _add_detect_changes(commands: argparse._SubParsersAction) -> None:
    detect = commands.add_parser(
        "detect-changes",
        help="find fused videos whose input objects changed since (same key, new ETag) and request them",
        description="LISTs the embedding prefixes (one request per 1000 keys, key ranges side by side) and "
        "compares each object's ETag with the one the strategy's latest manifest row recorded when it was "
        "read. A video an input of which changed (an upstream model swap with the same dims, a rewrite) "
        "becomes a re-fusion request with reason changed_upstream: the next run of the strategy fuses it "
        "again, counted under that reason in the summary (or now: refuse --changed). Rows fused before "
        "lineage was recorded cannot be compared and are counted. Exit codes: 0 done (also when nothing "
        "changed); 2 bad usage, no bucket or nothing published; 6 S3 unavailable.",
    )
    location_arguments(detect, "check")
    detect.add_argument("--threads", type=positive, default=8, help="key ranges listed at once (default: 8)")
    detect.add_argument("--dry-run", action="store_true", help="report what changed; request nothing")


def _add_refuse(commands: argparse._SubParsersAction) -> None:
    refuse = commands.add_parser(
        "refuse",
        help="fuse a strategy's videos again on purpose: some ids, a date range, everything, or what changed",
        description="Makes a re-fusion request for the chosen videos (or continues the open one for the same "
        "choice) and runs the job like a day (every run flag applies: --workers fans it out, --max-items "
        "caps it), so the request's videos are fused again whatever their state says, under the current "
        "lock and options. A run killed anywhere keeps what it committed: run the same refuse again and it "
        "continues; any later run of the strategy does too. Prints done of total at the end. --dates "
        "chooses by the run date that fused a video (its shard's date=). Exit codes as for run.",
    )
    choice = refuse.add_argument_group("which videos (one of)").add_mutually_exclusive_group(required=True)
    choice.add_argument("--ids", type=Path, metavar="FILE", help="a file of video ids, one per line")
    choice.add_argument(
        "--dates",
        type=parsed_by(refusal.parse_dates),
        metavar="A..B",
        help="videos fused on run dates A to B",
    )
    choice.add_argument("--all", action="store_true", help="every video with a published vector")
    choice.add_argument(
        "--changed", action="store_true", help="what detect-changes finds now (it runs first)"
    )
    add_run_arguments(refuse)
    refuse.set_defaults(strategy=None)


def run(args: argparse.Namespace) -> int:
    if args.command == "detect-changes":
        return detect_changes(args)
    return refuse(args)


def detect_changes(args: argparse.Namespace) -> int:
    found = changes.detect(
        s3io.make_client(args.threads * 2),
        resolve_bucket(args.bucket),
        args.root,
        args.strategy,
        threads=args.threads,
        request=not args.dry_run,
    )
    print("\n".join(found.lines()))
    return EXIT_OK


def refuse(args: argparse.Namespace) -> int:
    if args.strategy is None or "," in args.strategy or args.strategy == "all":
        raise ConfigError(f"refuse needs one --strategy, one of {', '.join(STRATEGY_NAMES)}")
    config = config_from_args(args)
    strategy = config.strategies[0]
    client = s3io.make_client(config.fetch_threads)
    if args.changed:
        found = changes.detect(client, config.bucket, config.root, strategy)
        print("\n".join(found.lines()))
        ids, reason = found.changed, refusals.CHANGED_UPSTREAM
    else:
        chosen = refusal.ids_from_file(args.ids) if args.ids else None
        ids = chosen or refusal.published_ids(client, config.bucket, config.root, strategy, args.dates)
        reason = refusals.REFUSE
    if not ids:
        print(f"refuse {strategy}: no videos chosen; nothing to do")
        return EXIT_OK
    request, continued = refusal.make_request(client, config.bucket, config.root, strategy, ids, reason)
    verb = "continuing" if continued else "requested"
    print(
        f"refuse {strategy}: {verb} re-fusion of {len(request.ids)} videos ({request.key})", file=sys.stderr
    )
    code = run_and_report(config, args.run_date, args.summary_json, args.workers)
    done = refusal.progress(client, config.bucket, config.root, strategy, request)
    print(
        f"refuse {strategy}: {done.done} of {done.total} videos fused again"
        + (f", {done.pending} left: run the same refuse again to continue" if done.pending else "; done")
    )
    return code
