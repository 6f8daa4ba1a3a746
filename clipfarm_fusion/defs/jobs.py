"""Three unpartitioned maintenance jobs over every strategy that is an asset (`ASSET_STRATEGIES`):

- `verify_published`: `verify.verify_strategy` over the whole store (or one `date`): lock, unique keys,
  every shard exists and every pointer resolves. It fails naming the bad shards; the daily checks
  cover a day's shards and a sample of the rest, this covers everything.
- `gc_orphan_shards`: `sweep.sweep` deletes shards no manifest row points to, older than
  `older_than` (default 1d). It runs in the fusion pool, so in a deployment it never overlaps a
  commit; the shards of chunks still being fused are not referenced yet, and the grace period protects
  them (and any run started from the CLI).

- `maintain_tables`: `maintenance.maintain` compacts, checkpoints and vacuums each strategy's manifest
  and state tables (Delta Lake), so daily commits never pile up small files. In the fusion pool too.

A strategy with nothing published yet (no manifest) is skipped. The schedules are in `schedules.py`:
maintenance runs daily by default, verify and gc are stopped until turned on.

No `from __future__ import annotations` here: Dagster reads the ops' `Config` annotations at import.
"""

from dagster import Config, Failure, MetadataValue, OpExecutionContext, Output, job, op
from pydantic import Field

from clipfarm_fusion.admin import maintenance, sweep
from clipfarm_fusion.defs.ops import FUSION_POOL
from clipfarm_fusion.defs.resources import ASSET_STRATEGIES, FusionResource
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import verify
from clipfarm_fusion.read.vectors import parse_run_date


class VerifyConfig(Config):
    date: str | None = Field(
        default=None, description="Only this date's rows and shards (YYYY-MM-DD); default: everything."
    )
    progress_every: int = Field(default=100, description="A progress log line every this many shards.")


class MaintainConfig(Config):
    retention: str = Field(
        default="7d",
        description="Vacuum keeps the files any table version younger than this needs (time travel "
        "works inside it): 7d, 30d.",
    )


class GcConfig(Config):
    older_than: str = Field(
        default="1d",
        description="Grace period: only orphans last modified longer ago go (30m, 12h, 1d, 7d; 0s for "
        "all). Must exceed the longest fusion run.",
    )
    dry_run: bool = Field(default=False, description="List what would be deleted; delete nothing.")


def _published_or_none(context: OpExecutionContext, strategy: str, work):
    """`work()`, or None (logged) when the strategy has no manifest yet: for a known strategy that is
    the one ConfigError `readback.load_manifest` raises."""
    try:
        return work()
    except ConfigError as exc:
        context.log.info(f"{strategy}: skipped: {exc}")
        return None


@op(description="Verify every shard and pointer of every strategy; fails naming what is broken.")
def verify_all_strategies(context: OpExecutionContext, config: VerifyConfig, fusion: FusionResource):
    client = fusion.client()
    day = parse_run_date(config.date)
    metadata: dict[str, MetadataValue] = {}
    failed: dict[str, str] = {}
    verified: list[str] = []
    for strategy in ASSET_STRATEGIES:
        report = _published_or_none(
            context,
            strategy,
            lambda strategy=strategy: verify.verify_strategy(
                client,
                fusion.bucket,
                fusion.root,
                strategy,
                day,
                threads=fusion.fetch_threads,
                progress_every=config.progress_every,
                logger=context.log,
            ),
        )
        if report is None:
            metadata[f"{strategy}/skipped"] = MetadataValue.text("no manifest")
            continue
        context.log.info("\n".join(report.lines()))
        verified.append(strategy)
        metadata[strategy] = MetadataValue.json(report.metadata())
        if not report.ok:
            failed[strategy] = str(report.failure())
    if failed:
        raise Failure(
            description="verify failed: " + "; ".join(failed.values()),
            metadata=metadata,
            allow_retries=False,
        )
    return Output(verified, metadata=metadata)


@op(
    description="Delete every strategy's orphan shards (no manifest row points to them) older than the "
    "grace period.",
    pool=FUSION_POOL,
)
def sweep_orphan_shards(context: OpExecutionContext, config: GcConfig, fusion: FusionResource):
    client = fusion.client()
    try:
        older_than = sweep.parse_age(config.older_than)
    except ConfigError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    metadata: dict[str, MetadataValue] = {}
    errors: list[str] = []
    totals = {"deleted": 0, "bytes_freed": 0, "orphans": 0, "kept_young": 0}
    for strategy in ASSET_STRATEGIES:
        result = _published_or_none(
            context,
            strategy,
            lambda strategy=strategy: sweep.sweep(
                client,
                fusion.bucket,
                fusion.root,
                strategy,
                older_than,
                dry_run=config.dry_run,
                logger=context.log,
            ),
        )
        if result is None:
            metadata[f"{strategy}/skipped"] = MetadataValue.text("no manifest")
            continue
        context.log.info("\n".join(result.lines()))
        facts = result.metadata()
        metadata[strategy] = MetadataValue.json(facts)
        for name in totals:
            totals[name] += int(facts[name])
        errors += result.errors
    metadata.update({name: MetadataValue.int(value) for name, value in totals.items()})
    metadata["dry_run"] = MetadataValue.bool(config.dry_run)
    if errors:
        raise Failure(
            description=f"{len(errors)} orphan shard(s) could not be deleted: {errors[:5]}",
            metadata=metadata,
        )
    return Output(totals, metadata=metadata)


@op(
    description="Compact, checkpoint and vacuum every strategy's manifest and state tables.",
    pool=FUSION_POOL,
)
def maintain_all_tables(context: OpExecutionContext, config: MaintainConfig, fusion: FusionResource):
    client = fusion.client()
    try:
        retention = sweep.parse_age(config.retention)
    except ConfigError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    metadata: dict[str, MetadataValue] = {}
    for strategy in ASSET_STRATEGIES:
        for upkeep in maintenance.maintain(client, fusion.bucket, fusion.root, strategy, retention):
            context.log.info(upkeep.line())
            name = upkeep.location.rsplit("/", 1)[-1]
            metadata[f"{strategy}/{name}"] = MetadataValue.json(
                {
                    "version": upkeep.version,
                    "files_compacted": upkeep.files_removed,
                    "files_written": upkeep.files_added,
                    "files_vacuumed": upkeep.vacuumed,
                }
            )
    return Output(len(metadata), metadata=metadata)


@job(
    name="maintain_tables",
    description="Compact the manifest and state tables (Delta Lake) of every strategy into ~32 MB files, "
    "checkpoint them and vacuum files older versions no longer need (config `retention`, default 7d).",
)
def maintain_tables_job():
    maintain_all_tables()


@job(
    name="verify_published",
    description="Check everything every strategy published: schema lock, unique manifest keys, every "
    "shard exists and every pointer resolves (one GET per shard). Config `date` limits it to one day.",
)
def verify_published_job():
    verify_all_strategies()


@job(
    name="gc_orphan_shards",
    description="Delete shards no manifest row points to (crashed runs, a losing concurrent writer, "
    "replaced rows) once older than `older_than` (default 1d); `dry_run` lists them only.",
)
def gc_orphan_shards_job():
    sweep_orphan_shards()
