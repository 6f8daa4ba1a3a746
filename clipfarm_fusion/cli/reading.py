"""`clipfarm-fusion inspect | export | verify | gc | maintain | snapshot-manifest`: look at what a strategy
has published, take it out as one file, check all of it, sweep the shards nothing points to, and keep
the lake tables compact.

Thin: parse, then `inspection` (what inspect prints), `read.vectors` and `read.export` (export),
`verify.verify_strategy` (verify), `sweep.sweep` (gc) and `maintenance` (maintain, snapshot-manifest)
do the work. Wired into `cli.main` with `add_commands(subparsers)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clipfarm_fusion.admin import maintenance, sweep
from clipfarm_fusion.cli import inspection
from clipfarm_fusion.cli.argtypes import iso_date, parsed_by, positive
from clipfarm_fusion.config import DEFAULT_ROOT, STRATEGY_NAMES, resolve_bucket
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import tables, verify
from clipfarm_fusion.read.export import WRITERS
from clipfarm_fusion.read.vectors import (
    common_dim,
    filter_rows,
    iter_shards,
    load_manifest,
    select_rows,
)
from clipfarm_fusion.stores import s3io

COMMANDS = ("inspect", "export", "verify", "gc", "maintain", "snapshot-manifest")
EXIT_OK = 0


def location_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """`--strategy`, `--bucket`, `--root`: where a strategy's outputs live, the same for every command."""
    parser.add_argument("--strategy", required=True, choices=STRATEGY_NAMES, help=f"the strategy to {verb}")
    parser.add_argument("--bucket", default=None, help="S3 bucket (default: $CLIPFARM_BUCKET)")
    parser.add_argument(
        "--root", default=DEFAULT_ROOT, help=f"key prefix inside the bucket (default: {DEFAULT_ROOT})"
    )


def _common_arguments(parser: argparse.ArgumentParser, date_help: str) -> None:
    location_arguments(parser, "read")
    parser.add_argument("--date", type=iso_date, default=None, metavar="YYYY-MM-DD", help=date_help)
    parser.add_argument(
        "--from-demo",
        type=Path,
        default=None,
        metavar="DIR",
        help="read what `clipfarm-fusion demo --out DIR` made (served on a private embedded S3 while this "
        "command runs; needs the demo extra); replaces --bucket",
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `inspect`, `export`, `verify`, `gc`, `maintain` and `snapshot-manifest` to the subcommands."""
    _add_inspect(subparsers)
    _add_export(subparsers)
    _add_verify(subparsers)
    _add_gc(subparsers)
    _add_maintain(subparsers)
    _add_snapshot_manifest(subparsers)


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser(
        "inspect",
        help="show a strategy's schema lock, manifest totals and, for given ids, their pointers and vectors; "
        "or (--failed) every failed or waiting item with its error",
        description="Prints the schema lock (with how many earlier locks migrate-schema kept), manifest totals "
        "by fusion_status and by shard date, and for each --video-id its pointer (fused_key#shard_idx), "
        "status, source_hash and vector stats (dim, L2 norm, min, max, mean), read with one GET per shard. "
        "A video with several manifest rows shows its latest. Exit codes: 0 done (unknown ids are printed "
        "as 'not in manifest'); 2 bad usage, no bucket or no manifest; 5 a pointer does not resolve. "
        "With --failed it lists the day's failed and waiting items from the state instead, every one with "
        "its error (the run summary keeps 10 per status).",
    )
    _common_arguments(inspect, "only rows whose shard is under date=<D>/ (totals and ids)")
    inspect.add_argument(
        "--video-id",
        dest="video_ids",
        action="extend",
        nargs="+",
        default=[],
        metavar="ID",
        help="video ids to look up (repeatable)",
    )
    inspect.add_argument(
        "--failed",
        action="store_true",
        help="list every item in a failed or waiting status (fail, fail_terminal, missing_required_modality, "
        "missing_text_*) with its error, read from the state, instead of the manifest; with --date, that "
        "day's items: while it is the newest day fused, exactly those its summary counts (invalid video ids "
        "never reach the state)",
    )
    inspect.add_argument(
        "--csv", action="store_true", help="with --failed: print CSV (header, one row per item), not a table"
    )


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="write a strategy's vectors and manifest rows to one training-ready .parquet or .npy file",
        description="Writes one row per video (its latest manifest row) with every manifest column and its "
        "vector, shard by shard, so memory stays bounded by a few shards. .parquet: manifest columns plus "
        "`vector` as fixed_size_list<float32>[F]. .npy: a structured array (strings as fixed-width unicode, "
        "nulls as '', `vector` as (F,) float32) that loads with np.load(path, allow_pickle=False). Rows are "
        "grouped by shard, in shard key order. The file appears only when complete. Exit codes: 0 written; "
        "2 bad usage, no bucket, no manifest, no rows, mixed widths or another suffix; 5 a pointer does "
        "not resolve.",
    )
    _common_arguments(export, "only rows whose shard is under date=<D>/")
    export.add_argument(
        "--out", type=Path, required=True, metavar="PATH.parquet|PATH.npy", help="the file to write"
    )
    export.add_argument(
        "--fused-dim",
        type=positive,
        default=None,
        help="only rows of this vector width (needed when migrate-schema left rows of another width)",
    )
    export.add_argument(
        "--threads", type=positive, default=8, help="shards fetched concurrently (default: 8)"
    )


def _add_verify(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser(
        "verify",
        help="check everything a strategy published: schema lock, unique keys, every shard and pointer",
        description="Checks that schema.json is readable and allows the manifest's fused_dims, that the "
        "manifest has one row per (video_id, source_hash), that state and manifest agree (every fused video's "
        "state points at its latest manifest row), that every shard the manifest references exists "
        "(one LIST per 1000 keys) and that every row's pointer resolves: the shard decodes, has shard_n "
        "rows of fused_dim-wide vectors and holds the row's video_id at shard_idx (one GET per shard, "
        "--threads at a time, shard by shard, so memory stays bounded). Prints a short report. Exit codes: "
        "0 all is well; 2 bad usage, no bucket or no manifest; 5 something does not resolve (a missing or "
        "broken shard, a bad pointer, a duplicated key, a lock or a state that disagrees; the first bad "
        "shard or video is named on stderr).",
    )
    _common_arguments(check, "only rows whose shard is under date=<D>/ (and only that date's shards)")
    check.add_argument("--threads", type=positive, default=8, help="shards fetched concurrently (default: 8)")
    check.add_argument(
        "--progress-every",
        type=positive,
        default=100,
        metavar="N",
        help="log a progress line every N shards (default: 100)",
    )


def _add_gc(subparsers: argparse._SubParsersAction) -> None:
    collect = subparsers.add_parser(
        "gc",
        help="delete orphan shards: those no manifest row points to, older than a grace period",
        description="Lists <root>/fused/<strategy>/shards/ (one request per 1000 keys), reads the manifest "
        "after the listing, and deletes (DeleteObjects, 1000 keys per request) every shard that no manifest "
        "row points to and whose LastModified is older than --older-than. Never deletes a shard the "
        "committed manifest references, nor a younger one, nor one written since the oldest run still in "
        "progress began (its staged objects say so), however long that run takes. Orphans come from crashed "
        "runs, a losing concurrent writer and reruns that replaced rows. Exit codes: 0 done (also when "
        "there was nothing to delete); 1 some deletes failed (named; rerun); 2 bad usage, no bucket or no "
        "manifest (nothing is swept without one).",
    )
    location_arguments(collect, "sweep")
    collect.add_argument(
        "--older-than",
        type=parsed_by(sweep.parse_age),
        default=sweep.DEFAULT_GRACE,
        metavar="AGE",
        help="grace period: only shards last modified longer ago than this go, e.g. 30m, 12h, 1d, 7d "
        "(default: 1d)",
    )
    collect.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted and delete nothing"
    )


def _add_maintain(subparsers: argparse._SubParsersAction) -> None:
    upkeep = subparsers.add_parser(
        "maintain",
        help="compact, checkpoint and vacuum a strategy's manifest and state tables",
        description="Daily commits each add a small file to the manifest and state tables (Delta Lake). "
        "This compacts them into files of about 32 MB (no row changes; a run in progress is not disturbed), "
        "writes a checkpoint, and vacuums the files no table version younger than --retention needs "
        "(replaced files and files a crashed commit left). Time travel works inside the retention window. "
        "The Dagster job maintain_tables runs this daily. Exit codes: 0 done; 2 bad usage or no bucket.",
    )
    location_arguments(upkeep, "maintain")
    upkeep.add_argument(
        "--retention",
        type=parsed_by(sweep.parse_age),
        default=maintenance.DEFAULT_RETENTION,
        metavar="AGE",
        help="keep files any version younger than this needs, e.g. 7d, 30d (default: 7d)",
    )
    upkeep.add_argument(
        "--dry-run", action="store_true", help="compact nothing; list what vacuum would delete"
    )


def _add_snapshot_manifest(subparsers: argparse._SubParsersAction) -> None:
    snapshot = subparsers.add_parser(
        "snapshot-manifest",
        help="write a strategy's manifest as one dated parquet file (for readers of a single file)",
        description="Runs write the manifest as a Delta table (<root>/fused/<strategy>/manifest/). For tools "
        "that read one parquet file, this writes the current manifest (the columns of docs/contract.md) to "
        "--out, by default s3://BUCKET/<root>/fused/<strategy>/snapshots/fused_manifest-<UTC time>.parquet: "
        "a snapshot says when it was taken, and gc keeps every shard a snapshot in the bucket points at "
        "until the snapshot is deleted. The seed-era fused_manifest.parquet path is left empty on purpose "
        "(its file moved to fused_manifest.parquet.imported at the import), so a reader still pointed there "
        "fails instead of reading rows that stopped changing. It reads the whole table: O(corpus) by nature. "
        "Exit codes: 0 written; 2 bad usage, no bucket or nothing published.",
    )
    location_arguments(snapshot, "snapshot")
    snapshot.add_argument(
        "--out",
        default=None,
        metavar="PATH|s3://BUCKET/KEY",
        help="where to write (default: a dated file under the strategy's snapshots/ in the bucket)",
    )


def run(args: argparse.Namespace) -> int:
    """Run `inspect`, `export`, `verify` or `gc`. Errors propagate: cli.main turns them into messages
    and exit codes (ConfigError 2, BrokenPointerError 5), the same way for every command."""
    command = {
        "inspect": inspect_strategy,
        "export": export,
        "verify": verify_command,
        "gc": gc,
        "maintain": maintain,
        "snapshot-manifest": snapshot_manifest,
    }[args.command]
    if getattr(args, "from_demo", None) is None:
        return command(args)
    from clipfarm_fusion.devtools.demo import demo_bucket

    with demo_bucket(args.from_demo) as bucket:
        args.bucket = bucket
        return command(args)


def inspect_strategy(args: argparse.Namespace) -> int:
    bucket = resolve_bucket(args.bucket)
    layout = Layout(args.root.strip("/"))
    client = s3io.make_client(8)
    if args.csv and not args.failed:
        raise ConfigError("--csv lists the failed items: give --failed too")
    if args.failed:
        return _inspect_failures(args, bucket, client)
    table = load_manifest(client, bucket, args.root, args.strategy)
    table = filter_rows(table, args.date)
    print(f"strategy {args.strategy}: s3://{bucket}/{layout.strategy_prefix(args.strategy)}")
    print(inspection.describe_lock(client, bucket, layout.schema_key(args.strategy)))
    scope = f" for date={args.date}" if args.date else ""
    print(f"manifest s3://{bucket}/{layout.manifest_table_key(args.strategy)}{scope}:")
    print("\n".join(inspection.manifest_totals(table)))
    if args.video_ids:
        print("video_ids:")
        print("\n".join(inspection.describe_ids(client, bucket, table, args.video_ids)))
    return EXIT_OK


def _inspect_failures(args: argparse.Namespace, bucket: str, client) -> int:
    """`inspect --failed`: the failed or waiting items (of --date), as a table or, with --csv, as CSV."""
    rows = tables.read_failures(args.strategy, args.date, bucket=bucket, root=args.root, client=client)
    if args.csv:
        rows.to_csv(sys.stdout, index=False)
        return EXIT_OK
    scope = f" of date={args.date}" if args.date else ""
    where = Layout(args.root.strip("/")).state_table_key(args.strategy)
    print(f"failed or waiting {args.strategy} items{scope}, from the state s3://{bucket}/{where}:")
    print("\n".join(inspection.failures_table(rows)))
    return EXIT_OK


def verify_command(args: argparse.Namespace) -> int:
    """Print the report; a failed verification raises BrokenPointerError (exit 5) naming the first bad
    shard, after the report is out."""
    bucket = resolve_bucket(args.bucket)
    report = verify.verify_strategy(
        s3io.make_client(args.threads),
        bucket,
        args.root,
        args.strategy,
        args.date,
        threads=args.threads,
        progress_every=args.progress_every,
    )
    print("\n".join(report.lines()), flush=True)
    if not report.ok:
        raise report.failure()
    return EXIT_OK


def gc(args: argparse.Namespace) -> int:
    """Sweep one strategy's orphan shards; exit 1 when some deletes failed (they are printed)."""
    bucket = resolve_bucket(args.bucket)
    result = sweep.sweep(
        s3io.make_client(8), bucket, args.root, args.strategy, args.older_than, dry_run=args.dry_run
    )
    print("\n".join(result.lines()))
    return 1 if result.errors else EXIT_OK


def maintain(args: argparse.Namespace) -> int:
    bucket = resolve_bucket(args.bucket)
    done = maintenance.maintain(
        s3io.make_client(8), bucket, args.root, args.strategy, args.retention, dry_run=args.dry_run
    )
    print(
        "\n".join(u.line() for u in done) or f"{args.strategy}: no tables yet under s3://{bucket}/{args.root}"
    )
    return EXIT_OK


def snapshot_manifest(args: argparse.Namespace) -> int:
    where, rows = maintenance.snapshot_manifest(
        s3io.make_client(8), resolve_bucket(args.bucket), args.root, args.strategy, args.out
    )
    print(f"wrote {rows} manifest rows to {where}")
    return EXIT_OK


def export(args: argparse.Namespace) -> int:
    out: Path = args.out
    writer = WRITERS.get(out.suffix.lower())
    if writer is None:
        raise ConfigError(
            f"--out {out}: cannot write {out.suffix or 'no suffix'}; use PATH.parquet or PATH.npy"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    bucket = resolve_bucket(args.bucket)
    client = s3io.make_client(args.threads)
    table = load_manifest(client, bucket, args.root, args.strategy)
    rows = select_rows(table, None, args.date, args.fused_dim).rows
    width = common_dim(rows, args.strategy)
    if width is None:
        raise ConfigError(f"no {args.strategy} manifest rows match the filters; nothing written to {out}")
    partial = out.with_name(out.name + ".partial")
    try:
        writer(partial, rows, width, iter_shards(client, bucket, rows, args.threads))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"exported {rows.num_rows} {args.strategy} vectors ({width}-d) to {out}")
    return EXIT_OK
