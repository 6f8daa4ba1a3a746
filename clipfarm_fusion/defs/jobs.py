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
- `detect_changes`: `changes.detect` compares every strategy's recorded input ETags with a LIST of the
  embeddings and requests the changed videos again (reason `changed_upstream`).
- `refuse`: a re-fusion request for one strategy, chosen in the run config as the CLI's `refuse` does
  (`ids`, `dates`, `all` or `changed`). The next materialisation of the strategy (today's partition,
  from the launchpad or the schedule) fuses what it names, fanned out like any day; the CLI's `refuse`
  makes the request and runs the day in one go.

A strategy with nothing published yet (no manifest) is skipped. The schedules are in `schedules.py`:
maintenance runs daily by default, verify and gc are stopped until turned on.

No `from __future__ import annotations` here: Dagster reads the ops' `Config` annotations at import.
"""

from dagster import Config, Failure, MetadataValue, OpExecutionContext, Output, job, op
from pydantic import Field

from clipfarm_fusion.admin import changes, maintenance, refusal, sweep
from clipfarm_fusion.defs.ops import FUSION_POOL
from clipfarm_fusion.defs.resources import ASSET_STRATEGIES, FusionResource
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import verify
from clipfarm_fusion.read.vectors import parse_run_date
from clipfarm_fusion.stores import refusals


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


class DetectChangesConfig(Config):
    dry_run: bool = Field(default=False, description="Report what changed; request nothing.")


class RefuseConfig(Config):
    strategy: str = Field(description="The strategy to fuse again (one of the assets).")
    ids: list[str] = Field(default=[], description="These video ids.")
    dates: str | None = Field(
        default=None, description="Videos fused on these run dates: A..B (YYYY-MM-DD..YYYY-MM-DD)."
    )
    all: bool = Field(default=False, description="Every video with a published vector.")
    changed: bool = Field(default=False, description="What a change detection finds now.")


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


@op(description="Find fused videos whose inputs changed under the same key and request them again.")
def detect_changes_all_strategies(
    context: OpExecutionContext, config: DetectChangesConfig, fusion: FusionResource
):
    client = fusion.client()
    metadata: dict[str, MetadataValue] = {}
    for strategy in ASSET_STRATEGIES:
        found = _published_or_none(
            context,
            strategy,
            lambda strategy=strategy: changes.detect(
                client, fusion.bucket, fusion.root, strategy, request=not config.dry_run
            ),
        )
        if found is None:
            metadata[f"{strategy}/skipped"] = MetadataValue.text("no manifest")
            continue
        context.log.info("\n".join(found.lines()))
        metadata[strategy] = MetadataValue.json(
            {
                "videos": found.videos,
                "changed": len(found.changed),
                "by_modality": found.by_modality,
                "unrecorded": found.unrecorded,
                "keys_listed": found.keys_listed,
                "list_requests": found.list_requests,
                "seconds": round(found.seconds, 2),
                "request": found.request_key,
            }
        )
    return Output(len(metadata), metadata=metadata)


@op(description="Request a re-fusion of one strategy's videos, chosen in the run config.")
def request_refusal(context: OpExecutionContext, config: RefuseConfig, fusion: FusionResource):
    if config.strategy not in ASSET_STRATEGIES:
        raise Failure(
            description=f"strategy {config.strategy!r} is not an asset here: {', '.join(ASSET_STRATEGIES)}"
        )
    chosen = [bool(config.ids), config.dates is not None, config.all, config.changed]
    if sum(chosen) != 1:
        raise Failure(description="choose exactly one of ids, dates, all or changed", allow_retries=False)
    client = fusion.client()
    try:
        if config.changed:
            found = changes.detect(client, fusion.bucket, fusion.root, config.strategy, request=False)
            ids, reason = found.changed, refusals.CHANGED_UPSTREAM
        else:
            dates = refusal.parse_dates(config.dates) if config.dates else None
            ids = config.ids or refusal.published_ids(
                client, fusion.bucket, fusion.root, config.strategy, dates
            )
            reason = refusals.REFUSE
        if not ids:
            return Output(0, metadata={"videos": MetadataValue.int(0)})
        request, continued = refusal.make_request(
            client, fusion.bucket, fusion.root, config.strategy, ids, reason
        )
        done = refusal.progress(client, fusion.bucket, fusion.root, config.strategy, request)
    except ConfigError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(
        "%s re-fusion of %d %s videos (%s): %d done; the next materialisation of %s fuses the rest",
        "continuing" if continued else "requested",
        done.total,
        config.strategy,
        request.key,
        done.done,
        config.strategy,
    )
    return Output(
        done.total,
        metadata={
            "videos": MetadataValue.int(done.total),
            "done": MetadataValue.int(done.done),
            "pending": MetadataValue.int(done.pending),
            "reason": MetadataValue.text(reason),
            "request": MetadataValue.path(f"s3://{fusion.bucket}/{request.key}"),
        },
    )


@job(
    name="detect_changes",
    description="Compare every strategy's recorded input ETags with a LIST of the embeddings (one request "
    "per 1000 keys) and request the videos whose inputs changed under the same key (`dry_run`: report only).",
)
def detect_changes_job():
    detect_changes_all_strategies()


@job(
    name="refuse",
    description="Request a re-fusion of one strategy (run config: `ids`, `dates` A..B, `all` or `changed`); "
    "the strategy's next materialisation fuses it, fanned out like a day, and shows its progress.",
)
def refuse_job():
    request_refusal()
