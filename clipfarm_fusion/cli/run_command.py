"""The `run` command: its flags (the run's settings as the command line spells them), the FusionConfig
they make, and running one day with its summary printed."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from clipfarm_fusion.cli.argtypes import comma_list, iso_date, non_negative, positive, weights
from clipfarm_fusion.cli.exits import EXIT_CONFLICT, EXIT_DRIFT, EXIT_OK
from clipfarm_fusion.config import (
    DEFAULT_TEXT_TERMINAL_STATUSES,
    STRATEGY_NAMES,
    FusionConfig,
    parse_strategies,
    resolve_bucket,
)
from clipfarm_fusion.run import pipeline

# The seed script's flag spellings, accepted (not shown in --help) so a workflow that called it can
# switch by changing only the command. Each maps to the flag it means.
SEED_ALIASES = {
    "--run_date": "--run-date",
    "--fusion_strategy": "--strategy",
    "--s3_bucket": "--bucket",
    "--metadata_csv": "--metadata",
    "--max_items": "--max-items",
    "--shard_size": "--shard-size",
    "--text_dim": "--text-dim",
    "--max_fail_retries": "--max-fail-retries",
    "--include_captured_at_in_hash": "--include-captured-at-in-hash",
    "--no-append_text_presence_mask": "--no-text-mask",
    "--no_append_text_presence_mask": "--no-text-mask",
    "--state_dir": "--state-dir",
    "--text_state": "--text-state",
    "--summary_json": "--summary-json",
    "--terminal_text_statuses": "--terminal-text-statuses",
    "--sample_size": "--sample-size",
}


def add_run_command(commands) -> None:
    """The `run` subcommand, its flags in four groups (in --help order), and the seed's spellings."""
    run = commands.add_parser(
        "run",
        help="fuse one day's delta and publish shards, manifest, schema lock and state",
        description="Fuse every video of the metadata horizon (as of --run-date) whose fused vector is missing "
        "or stale. Exit codes: 0 run completed (item failures are data, see the summary); 2 bad usage or "
        "config; 3 a strategy stopped for schema drift (named on stderr; it wrote nothing, the others "
        "published); 4 a strategy yielded to a concurrent run that committed some of its videos (named on "
        "stderr; the others published): rerun the day; 6 S3 unavailable past --s3-patience, nothing "
        "recorded against any item: retry later; 7 a published store (a seed-era state file or manifest to "
        "import, schema.json) cannot be read: repair it, nothing was written.",
    )
    add_run_arguments(run)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of `run`, in its four groups, and the seed's spellings: `refuse` runs like a day too."""
    _inputs(parser)
    _batching(parser)
    _gating(parser)
    _options_and_output(parser)
    add_aliases(parser, SEED_ALIASES)


def _inputs(run: argparse.ArgumentParser) -> None:
    """Which day, which strategies, and where the inputs and the outputs are."""
    run.add_argument(
        "--run-date",
        type=iso_date,
        default=None,
        help="the day to fuse (YYYY-MM-DD; default: today, UTC); shards land in date=<it>. A date after "
        "today is refused",
    )
    run.add_argument(
        "--strategy",
        default="all",
        help="all (concat, sum_pool, max_pool; the default), or one or more of "
        f"{', '.join(STRATEGY_NAMES)} separated by commas; every object is read once whatever the number",
    )
    run.add_argument("--bucket", default=None, help="S3 bucket (default: $CLIPFARM_BUCKET)")
    run.add_argument("--root", default="clipfarm", help="key prefix inside the bucket (default: clipfarm)")
    run.add_argument(
        "--metadata",
        default=None,
        metavar="PATH|s3://B/KEY",
        help="metadata horizon CSV or Parquet (default: s3://<bucket>/<root>/metadata/shorts_metadata_horizon.csv)",
    )
    run.add_argument(
        "--text-state",
        default=None,
        metavar="PATH|s3://B/KEY",
        help="text stage SQLite (default: s3://<bucket>/<root>/state/text_downloader.sqlite)",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=Path("state"),
        help="a local cache: the text stage's snapshot, revalidated each run with one conditional GET. The "
        "state itself is a table in the bucket, so any machine and any --state-dir continue where the bucket "
        "says. A seed-era fusion_<s>.sqlite found here is imported once when the bucket has no state "
        "(default: ./state)",
    )


def _batching(run: argparse.ArgumentParser) -> None:
    """How much of the day, cut how, retried how often."""
    run.add_argument(
        "--max-items",
        type=non_negative,
        default=None,
        help="read the embeddings of at most N videos this run, in video_id order (videos still waiting "
        "for their text cost nothing against the cap); the rest is reported as deferred (default and 0: no cap)",
    )
    run.add_argument(
        "--shard-size",
        type=positive,
        default=2048,
        help="vectors per shard, also the batch size that bounds memory (default: 2048)",
    )
    run.add_argument(
        "--chunk-size",
        type=positive,
        default=FusionConfig.chunk_size,
        help="videos per chunk: the day's delta is fused a chunk at a time, each chunk by one worker, and "
        f"published in one commit (default: {FusionConfig.chunk_size}; with --max-items the day is one chunk)",
    )
    run.add_argument(
        "--workers",
        type=positive,
        default=1,
        help="fuse the chunks in N local processes; the plan and the commit stay in this one. Worth it for "
        "a day of several chunks (a backfill, a re-fusion); on Dagster, CLIPFARM_EXECUTOR does this (default: 1)",
    )
    run.add_argument(
        "--max-fail-retries",
        type=int,
        default=3,
        help="failures before an item becomes fail_terminal (default: 3)",
    )


def _gating(run: argparse.ArgumentParser) -> None:
    """Text dims and the mask, identity, the gating policy, dates and the text recheck."""
    run.add_argument(
        "--text-dim",
        type=positive,
        default=768,
        help="text dim for placeholders before a schema lock exists (default: 768)",
    )
    run.add_argument(
        "--include-captured-at-in-hash", action="store_true", help="source_hash = sha256(url|captured_at)"
    )
    run.add_argument("--no-text-mask", action="store_true", help="do not append the text-presence mask")
    run.add_argument(  # the seed's spelling of the default; --no-append_text_presence_mask is an alias
        "--append_text_presence_mask", dest="no_text_mask", action="store_false", help=argparse.SUPPRESS
    )
    run.add_argument(
        "--terminal-text-statuses",
        type=comma_list,
        default=DEFAULT_TEXT_TERMINAL_STATUSES,
        metavar="A,B",
        help="text stage statuses that mean no text will ever come, so the video is fused with a zero "
        f"text vector (default: {','.join(DEFAULT_TEXT_TERMINAL_STATUSES)})",
    )
    run.add_argument(
        "--strict-dates",
        action="store_true",
        help="refuse (exit 2) a metadata file whose captured_at values are not ISO 8601; by default they "
        "count as undated and the summary reports how many",
    )
    run.add_argument(
        "--recheck-text",
        action="store_true",
        help="also upgrade placeholders whose text .npy exists though the text stage never said so: one "
        "LIST of the text prefix (a request per 1,000 files) and a GET per such placeholder; the weekly "
        "Dagster job text_recheck_job does the same",
    )


def _options_and_output(run: argparse.ArgumentParser) -> None:
    """Patience, the summary, and the options that are locked in schema.json."""
    run.add_argument(
        "--s3-patience",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to ride out an S3 outage (connection errors, 5xx, SlowDown) before stopping with exit "
        "6; an outage never counts as an item failure (default: 60)",
    )
    run.add_argument(
        "--sample-size",
        type=positive,
        default=10,
        help="sample video_ids (with their errors) kept per status in the summary (default: 10)",
    )
    run.add_argument(
        "--l2-normalize",
        action="store_true",
        help="scale each modality to unit L2 norm before fusing (recorded in schema.json; zero stays zero)",
    )
    run.add_argument(
        "--projection",
        default=None,
        metavar="PATH|s3://B/KEY",
        help="the .npz artifact of strategy projection (see make-projection); its sha256 is locked in schema.json",
    )
    run.add_argument(
        "--weights",
        type=weights,
        default=(1.0, 1.0, 1.0),
        metavar="V,A,T",
        help="weighted_pool's video,audio,text weights, renormalised over the modalities present "
        "(recorded in schema.json; default 1,1,1)",
    )
    run.add_argument(
        "--summary-json", type=Path, default=None, help="also write the run summary as JSON here"
    )


def add_aliases(parser: argparse.ArgumentParser, aliases: dict[str, str]) -> None:
    """Accept each alias as the option it names, without listing it in --help (argparse has no public
    way to hide one spelling of an option, so the alias is registered on the option's own action)."""
    for alias, option in aliases.items():
        parser._option_string_actions[alias] = parser._option_string_actions[option]


def config_from_args(args: argparse.Namespace) -> FusionConfig:
    return FusionConfig(
        bucket=resolve_bucket(args.bucket),
        root=args.root,
        strategies=parse_strategies(args.strategy),
        metadata_uri=args.metadata,
        text_state_uri=args.text_state,
        state_dir=args.state_dir,
        max_items=args.max_items,
        text_terminal_statuses=args.terminal_text_statuses,
        sample_size=args.sample_size,
        strict_dates=args.strict_dates,
        s3_patience_seconds=args.s3_patience,
        shard_size=args.shard_size,
        chunk_size=args.chunk_size,
        max_fail_retries=args.max_fail_retries,
        text_dim=args.text_dim,
        include_captured_at_in_hash=args.include_captured_at_in_hash,
        append_text_presence_mask=not args.no_text_mask,
        l2_normalize=args.l2_normalize,
        weights=args.weights,
        projection_uri=args.projection,
        recheck_text_files=args.recheck_text,
        progress=sys.stderr.isatty(),
    )


def progress_bar(enabled: bool):
    """A tqdm bar on an interactive terminal; otherwise the pipeline's periodic log lines suffice."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="video", desc="fusing", dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def run_and_report(
    config: FusionConfig, run_date: date | None, summary_json: Path | None, workers: int = 1
) -> int:
    """Run one day and print its summary table once (stdout); exit 4 when a strategy yielded to a
    concurrent run, else 3 when one stopped on drift (the other strategies publish either way)."""
    run_date = run_date or datetime.now(UTC).date()
    on_progress, close = progress_bar(config.progress)
    try:
        summary = pipeline.run(config, run_date, on_progress=on_progress, workers=workers)
    finally:
        close()
    print(summary.to_table())
    if summary_json:
        summary.write_json(summary_json)
        print(f"summary written to {summary_json}")
    for name, why in summary.stopped.items():
        print(
            f"clipfarm-fusion: schema drift: {name} stopped, nothing of it published: {why}", file=sys.stderr
        )
    for name, why in summary.conflicts.items():
        print(f"clipfarm-fusion: concurrent write: {name} published nothing: {why}", file=sys.stderr)
    if summary.stopped or summary.conflicts:
        published = ", ".join(summary.strategies) or "none"
        print(
            f"clipfarm-fusion: stopped: {', '.join([*summary.stopped, *summary.conflicts])}; "
            f"published: {published}",
            file=sys.stderr,
        )
        return EXIT_CONFLICT if summary.conflicts else EXIT_DRIFT
    return EXIT_OK
