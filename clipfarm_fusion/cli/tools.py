"""The commands beside `run` and the read side: `demo`, `dev`, `migrate-schema` and
`make-projection`, their parsers and what each does."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipfarm_fusion.cli import reading
from clipfarm_fusion.cli.argtypes import positive, weights
from clipfarm_fusion.cli.exits import EXIT_OK
from clipfarm_fusion.config import STRATEGY_NAMES, resolve_bucket
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools.demo_days import DEFAULT_DAYS, DEFAULT_VIDEOS
from clipfarm_fusion.stores import s3io


def add_tool_commands(commands) -> None:
    _add_demo(commands)
    _add_dev(commands)
    _add_migrate(commands)
    _add_make_projection(commands)


def _days_arguments(parser, what: str) -> None:
    """`--days` and `--videos`: the demo days that `demo` and `dev` seed (`devtools.demo_days`)."""
    parser.add_argument(
        "--days",
        type=positive,
        default=DEFAULT_DAYS,
        help=f"consecutive days ending yesterday (UTC) to {what} (default: {DEFAULT_DAYS}); the first covers "
        "every gating case, each later one brings what upstream owed the day before, and the newest of two "
        "or more has a batch of broken files that fails the fail-rate check",
    )
    parser.add_argument(
        "--videos",
        type=positive,
        default=DEFAULT_VIDEOS,
        help=f"new videos per day (default: {DEFAULT_VIDEOS})",
    )


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="seed synthetic days on an embedded S3 server and fuse each with all three strategies",
        description="Starts a moto S3 server on loopback (no AWS setup, no network), adds the demo days one "
        "at a time, the first covering every gating case, fuses each with all strategies as it arrives and "
        "prints each day's summary and fail rate.",
    )
    _days_arguments(demo, "add and fuse")
    demo.add_argument(
        "--summary-json",
        type=Path,
        default=None,
        help="also write the days' run summaries here: a JSON array, oldest day first, of the object "
        "`run --summary-json` writes",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("clipfarm-demo"),
        help="where to copy the outputs and state (default: ./clipfarm-demo)",
    )


def _add_dev(commands) -> None:
    dev = commands.add_parser(
        "dev",
        help="open the Dagster UI on the demo days: embedded S3, seeded bucket, `dg dev`",
        description="Starts an embedded S3 server (moto, loopback), seeds the demo days into "
        "$CLIPFARM_BUCKET (default clipfarm-demo) if that bucket is empty, and runs `dg dev` on "
        "clipfarm_fusion.defs.definitions until Ctrl-C (needs the dev extra); materialise the days as a "
        "backfill. DAGSTER_HOME defaults to a temporary one with the package's dagster.yaml (the embedded "
        "S3 is temporary too); set DAGSTER_HOME to keep the run history.",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default: 127.0.0.1)")
    dev.add_argument("--port", type=positive, default=3000, help="port of the UI (default: 3000)")
    _days_arguments(dev, "seed")
    dev.add_argument(
        "--external-s3",
        action="store_true",
        help="use the S3 of your AWS configuration (e.g. AWS_ENDPOINT_URL of infra/'s MinIO) instead of an "
        "embedded one; the demo days are still seeded only into an empty bucket",
    )


def _add_migrate(commands) -> None:
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


def _add_make_projection(commands) -> None:
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


def demo(args: argparse.Namespace) -> int:
    from clipfarm_fusion.devtools.demo import run_demo

    return run_demo(args.videos, args.days, args.summary_json, args.out)


def dev(args: argparse.Namespace) -> int:
    from clipfarm_fusion.devtools.dev import run_dev

    return run_dev(args.host, args.port, args.videos, args.days, args.external_s3)


HANDLERS = {
    "demo": demo,
    "dev": dev,
    "migrate-schema": migrate_schema,
    "make-projection": make_projection,
}
