"""The command line: `clipfarm-fusion run | demo`. Thin: parse, build a FusionConfig, call pipeline.run()."""

from __future__ import annotations

import argparse
import faulthandler
import gc
import logging
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import botocore.exceptions

from clipfarm_fusion.cli import reading
from clipfarm_fusion.cli.argtypes import comma_list, iso_date, non_negative, positive, weights
from clipfarm_fusion.config import (
    DEFAULT_TEXT_TERMINAL_STATUSES,
    STRATEGY_NAMES,
    FusionConfig,
    parse_strategies,
    resolve_bucket,
)
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import (
    ConcurrentWriteError,
    ConfigError,
    S3UnavailableError,
    SchemaDriftError,
    StoreError,
)
from clipfarm_fusion.read.vectors import BrokenPointerError
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.stores import s3io

EXIT_OK, EXIT_USAGE, EXIT_DRIFT, EXIT_CONFLICT, EXIT_BROKEN, EXIT_UNAVAILABLE, EXIT_STORE = (
    0,
    2,
    3,
    4,
    5,
    6,
    7,
)
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
log = logging.getLogger("clipfarm_fusion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipfarm-fusion",
        description="Fuse per-video video/audio/text embeddings on S3 into sharded, manifest-indexed vectors.",
        epilog="S3 endpoint and credentials come from the standard AWS configuration "
        "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_DEFAULT_REGION).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="fuse one day's delta and publish shards, manifest, schema lock and state",
        description="Fuse every video of the metadata horizon (as of --run-date) whose fused vector is missing "
        "or stale. Exit codes: 0 run completed (item failures are data, see the summary); 2 bad usage or "
        "config; 3 a strategy stopped for schema drift (named on stderr; it wrote nothing, the others "
        "published); 4 another run wrote the same strategy; 6 S3 unavailable past --s3-patience, nothing "
        "recorded against any item: retry later; 7 a published store (a seed-era state file or manifest to "
        "import, schema.json) cannot be read: repair it, nothing was written.",
    )
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
    add_aliases(run, SEED_ALIASES)

    demo = commands.add_parser(
        "demo",
        help="seed a synthetic day on an embedded S3 server and fuse it with all three strategies",
        description="Starts a moto S3 server on loopback (no AWS setup, no network), seeds a day that covers "
        "every gating case, runs all strategies and prints the summary.",
    )
    demo.add_argument(
        "--videos", type=positive, default=500, help="videos in the synthetic day (default: 500)"
    )
    demo.add_argument(
        "--summary-json", type=Path, default=None, help="also write the run summary as JSON here"
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("clipfarm-demo"),
        help="where to copy the outputs and state (default: ./clipfarm-demo)",
    )

    dev = commands.add_parser(
        "dev",
        help="open the Dagster UI on a demo day: embedded S3, seeded bucket, `dg dev`",
        description="Starts an embedded S3 server (moto, loopback), seeds the synthetic demo day into "
        "$CLIPFARM_BUCKET (default clipfarm-demo) if that bucket is empty, and runs `dg dev` on "
        "clipfarm_fusion.defs.definitions until Ctrl-C (needs the dev extra). DAGSTER_HOME defaults to a "
        "temporary one with the package's dagster.yaml (the embedded S3 is temporary too); set DAGSTER_HOME "
        "to keep the run history.",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default: 127.0.0.1)")
    dev.add_argument("--port", type=positive, default=3000, help="port of the UI (default: 3000)")
    dev.add_argument(
        "--videos", type=positive, default=500, help="videos in the seeded demo day (default: 500)"
    )
    dev.add_argument(
        "--external-s3",
        action="store_true",
        help="use the S3 of your AWS configuration (e.g. AWS_ENDPOINT_URL of infra/'s MinIO) instead of an "
        "embedded one; the demo day is still seeded only into an empty bucket",
    )

    migrate = commands.add_parser(
        "migrate-schema",
        help="accept new embedding dims for a strategy: the deliberate way to change schema.json",
        description="Replaces <root>/fused/<strategy>/schema.json after an upstream model change (the daily run "
        "stops with exit code 3 until then). Dims not given are probed from a sample of the current embeddings. "
        "Old manifest rows and shards stay as they are and keep their own fused_dim; the old lock is kept in "
        "the new lock's history. Exit codes: 0 done or nothing to do; 2 bad usage, no lock, or nothing to probe; "
        "4 the lock changed while migrating.",
    )
    reading.location_arguments(migrate, "migrate")
    for modality in ("video", "audio", "text"):
        migrate.add_argument(
            f"--{modality}-dim", type=positive, default=None, help=f"new {modality} dim (default: probed)"
        )
    migrate.add_argument(
        "--text-mask",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="append the text-presence mask from now on (default: keep the locked setting)",
    )
    migrate.add_argument(
        "--sample", type=positive, default=32, help="embeddings per modality to probe (default: 32)"
    )
    migrate.add_argument(
        "--l2-normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise modalities from now on (default: keep the locked setting)",
    )
    migrate.add_argument(
        "--weights",
        type=weights,
        default=None,
        metavar="V,A,T",
        help="new weighted_pool weights (default: keep)",
    )
    migrate.add_argument(
        "--projection",
        default=None,
        metavar="PATH|s3://B/KEY",
        help="strategy projection only (required there): the artifact to lock, e.g. a new version from "
        "make-projection; its sha256 becomes the locked projection_id",
    )
    migrate.add_argument("--dry-run", action="store_true", help="show the new lock without writing it")

    make = commands.add_parser(
        "make-projection",
        help="build a frozen projection artifact (PCA of fused vectors, or a seeded Gaussian matrix)",
        description="Writes a .npz artifact for strategy projection: P (D_in, D) [and b], base_strategy. "
        "D_in is the --from-strategy's locked width without the mask. pca: the top D principal axes of a "
        "sample of its fused vectors (numpy SVD); gaussian: a seeded N(0, 1/D) matrix. The artifact is "
        "written once and never overwritten; its sha256 is the projection_id. Then fuse with: "
        "clipfarm-fusion run --strategy projection --projection <out>.",
    )
    make.add_argument("--kind", required=True, choices=("pca", "gaussian"), help="how P is made")
    make.add_argument("--dim", required=True, type=positive, help="output dimension D")
    make.add_argument("--seed", type=int, default=0, help="seed of the gaussian matrix (default: 0)")
    make.add_argument(
        "--from-strategy",
        default="concat",
        choices=[name for name in STRATEGY_NAMES if name != "projection"],
        help="the base strategy to project (default: concat)",
    )
    make.add_argument("--out", required=True, metavar="PATH|s3://B/KEY", help="where to write the .npz")
    make.add_argument(
        "--bucket", default=None, help="S3 bucket of the fused vectors (default: $CLIPFARM_BUCKET)"
    )
    make.add_argument("--root", default="clipfarm", help="key prefix inside the bucket (default: clipfarm)")
    make.add_argument(
        "--sample", type=positive, default=4096, help="fused vectors PCA learns from (default: 4096)"
    )
    reading.add_commands(commands)
    return parser


def add_aliases(parser: argparse.ArgumentParser, aliases: dict[str, str]) -> None:
    """Accept each alias as the option it names, without listing it in --help (argparse has no public
    way to hide one spelling of an option, so the alias is registered on the option's own action)."""
    for alias, option in aliases.items():
        parser._option_string_actions[alias] = parser._option_string_actions[option]


def make_projection(args: argparse.Namespace) -> int:
    from clipfarm_fusion.stores.projection_artifacts import make

    bucket = resolve_bucket(args.bucket)
    projection_id, input_dim, dim = make(
        s3io.make_client(16),
        bucket,
        args.root.strip("/"),
        kind=args.kind,
        dim=args.dim,
        seed=args.seed,
        base=args.from_strategy,
        out=args.out,
        sample_size=args.sample,
    )
    print(f"wrote {args.out}: {args.kind} {input_dim} -> {dim}, projection_id {projection_id}")
    print(
        f"fuse with: clipfarm-fusion run --strategy projection --projection {args.out} --run-date YYYY-MM-DD"
    )
    return EXIT_OK


def migrate_schema(args: argparse.Namespace) -> int:
    from clipfarm_fusion.admin.migrate import describe, migrate

    bucket = resolve_bucket(args.bucket)
    dims = {"video": args.video_dim, "audio": args.audio_dim, "text": args.text_dim}
    migration = migrate(
        s3io.make_client(8),
        bucket,
        args.root.strip("/"),
        args.strategy,
        dims=dims,
        mask=args.text_mask,
        l2_normalize=args.l2_normalize,
        weights=args.weights,
        projection_uri=args.projection,
        sample=args.sample,
        dry_run=args.dry_run,
    )
    print(
        describe(
            migration, f"s3://{bucket}/{Layout(args.root.strip('/')).schema_key(args.strategy)}", args.dry_run
        )
    )
    return EXIT_OK


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


def demo(args: argparse.Namespace) -> int:
    from clipfarm_fusion.devtools.demo import run_demo

    return run_demo(args.videos, args.summary_json, args.out)


def dev(args: argparse.Namespace) -> int:
    from clipfarm_fusion.devtools.dev import run_dev

    return run_dev(args.host, args.port, args.videos, args.external_s3)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _run_command(args)
    finally:
        # Free Arrow objects while Arrow is still alive: left to interpreter teardown, a collection
        # in another thread intermittently aborts the process (apache/arrow#34314).
        gc.collect()


def _run_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "demo":
            return demo(args)
        if args.command == "migrate-schema":
            return migrate_schema(args)
        if args.command == "make-projection":
            return make_projection(args)
        if args.command in reading.COMMANDS:
            return reading.run(args)
        if args.command == "dev":
            return dev(args)
        return run_and_report(config_from_args(args), args.run_date, args.summary_json, args.workers)
    except Exception as exc:
        verdict = exit_for(exc)
        if verdict is None:
            raise
        code, message = verdict
        print(f"clipfarm-fusion: {message}", file=sys.stderr)
        return code


# Our errors, then botocore's that mean "fix your setup": (type, exit code, message prefix, hint).
_EXITS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (ConfigError, EXIT_USAGE, "error", ""),
    (SchemaDriftError, EXIT_DRIFT, "schema drift", ""),
    (ConcurrentWriteError, EXIT_CONFLICT, "concurrent write", ""),
    (StoreError, EXIT_STORE, "unreadable store", ""),
    (S3UnavailableError, EXIT_UNAVAILABLE, "", ""),
    (BrokenPointerError, EXIT_BROKEN, "broken pointer", ""),
    (
        botocore.exceptions.ProfileNotFound,
        EXIT_USAGE,
        "error",
        "; set AWS_PROFILE to a configured profile or unset it",
    ),
    (
        botocore.exceptions.ParamValidationError,
        EXIT_USAGE,
        "error: S3 rejected a parameter",
        "; check --bucket and --root",
    ),
    (
        botocore.exceptions.NoCredentialsError,
        EXIT_USAGE,
        "error",
        "; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
    ),
)


def exit_for(exc: BaseException) -> tuple[int, str] | None:
    """The one place that maps an error to (exit code, message); None for a bug (let it raise)."""
    verdict = _verdict(exc)
    return None if verdict is None else (verdict[0], s3io.redacted(verdict[1]))


def _verdict(exc: BaseException) -> tuple[int, str] | None:
    for kind, code, prefix, hint in _EXITS:
        if isinstance(exc, kind):
            return code, f"{prefix}: {exc}{hint}" if prefix else f"{exc}{hint}"
    if (problem := s3io.setup_problem(exc)) is not None:
        return EXIT_USAGE, f"error: {problem}"
    if s3io.is_fault(exc):  # any command: an outage is "retry later", never a traceback
        return EXIT_UNAVAILABLE, str(s3io.unavailable(exc, "talking to it"))
    return None


def entry() -> None:
    """The `clipfarm-fusion` console script: `main`, then, once every stream is flushed, a hard exit.
    Arrow's and delta-rs's native threads can abort a normal interpreter teardown ("terminate called
    without an active exception", apache/arrow#34314), turning a finished run into exit -6; nothing of
    ours needs the teardown once `main` has returned. A native crash (a segfault in Arrow or delta-rs)
    prints every thread's Python stack on stderr first, so it is never a silent exit 139."""
    faulthandler.enable()
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, bad usage
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
