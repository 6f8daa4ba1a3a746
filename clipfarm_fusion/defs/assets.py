"""One daily-partitioned asset per strategy, all computed by one subsettable `multi_asset`.

Materialising several strategies together is one `pipeline.run()` over the selected strategies, so each
embedding object is read once per partition, not once per strategy. The body stays a few lines:
resource + partition key -> `pipeline.run()` -> one `MaterializeResult` per selected strategy.

Each strategy depends on its own previous day (a self-dependency) because it does: day D's delta is
whatever day D-1 left in the state DB. Dagster then backfills the days oldest first, one run per day
(`BackfillPolicy.multi_run(1)`), and never starts a day before the one before it has materialised, so a
backfill gives exactly what running the days one by one in order gives.

The inputs are declared too, as external assets (group `upstream`, never materialised here): the three
embedding prefixes, the metadata horizon and the text stage's DB. Each fused asset lists them as deps, so
the lineage shows where its vectors come from and the metadata names each input's S3 path pattern.

Under several strategies, one that must stop (its schema.json disagrees with the inputs or the options)
stops alone: the others publish and materialise, then the step fails naming the stopped ones.
"""

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    multi_asset,
)

from .. import pipeline, policy
from ..errors import ClipfarmError, ConcurrentWriteError, S3UnavailableError
from ..layout import MODALITIES, Layout
from ..summary import RunSummary, StrategySummary
from . import checks
from .partitions import daily_partitions, run_date
from .resources import ASSET_STRATEGIES, FusionResource

FUSION_POOL = "clipfarm_fusion"
STATUSES: tuple[str, ...] = (
    policy.SUCCESS_FULL,
    policy.SUCCESS_PLACEHOLDER,
    policy.MISSING_REQUIRED,
    policy.MISSING_TEXT_UNAVAILABLE,
    policy.MISSING_TEXT_PENDING,
    policy.FAIL,
    policy.FAIL_TERMINAL,
    policy.INVALID_VIDEO_ID,
)
BAR_WIDTH = 30

DESCRIPTIONS = {
    "concat": "Fused vectors [video | audio | text | mask], fused_dim = Dv+Da+Dt+1.",
    "sum_pool": "Fused vectors: zero-padded elementwise sum of video, audio, text, plus the mask.",
    "max_pool": "Fused vectors: zero-padded elementwise max of video, audio, text, plus the mask.",
    "mean_pool": "Fused vectors: zero-padded mean over the modalities present, plus the mask.",
    "weighted_pool": "Fused vectors: weighted zero-padded mean (weights in schema.json), plus the mask.",
}
# The bucket and root are run config, so the paths are patterns; the layout module builds them.
_PATTERN = Layout("<root>")
_S3 = "s3://<bucket>/"
UPSTREAM_SPECS = [
    *(
        AssetSpec(
            ["embeddings", modality],
            description=f"One {modality} embedding per video (.npy, float32), written by the upstream "
            f"{modality} embedding stage; a video whose object is missing is not fused that day.",
            metadata={
                "path_pattern": MetadataValue.text(_S3 + _PATTERN.embedding_key(modality, "<video_id>")),
                "prefix": MetadataValue.text(_S3 + _PATTERN.embedding_prefix(modality)),
            },
            group_name="upstream",
            kinds={"s3", "numpy"},
        )
        for modality in MODALITIES
    ),
    AssetSpec(
        "metadata_horizon",
        description="The videos to fuse (video_id, url, captured_at): a day's run reads the rows captured "
        "on or before its date. The resource's `metadata` field can point elsewhere.",
        metadata={"path_pattern": MetadataValue.text(_S3 + _PATTERN.metadata_key())},
        group_name="upstream",
        kinds={"s3", "csv"},
    ),
    AssetSpec(
        "text_stage_state",
        description="The text downloader's SQLite snapshot: whether a video's text is still owed (the item "
        "waits) or will never come (fused with a placeholder). The resource's `text_state` field can "
        "point elsewhere.",
        metadata={"path_pattern": MetadataValue.text(_S3 + _PATTERN.text_state_key())},
        group_name="upstream",
        kinds={"s3", "sqlite"},
    ),
]
FUSION_SPECS = [
    AssetSpec(
        name,
        description=DESCRIPTIONS.get(name, f"Fused vectors of strategy {name}."),
        group_name="fused_embeddings",
        kinds={"s3", "parquet"},
        skippable=True,
        deps=[
            AssetDep(name, partition_mapping=TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)),
            *(spec.key for spec in UPSTREAM_SPECS),
        ],
    )
    for name in ASSET_STRATEGIES
]


@multi_asset(
    name="fuse_embeddings",
    specs=FUSION_SPECS,
    check_specs=[checks.fail_rate_spec(name) for name in ASSET_STRATEGIES],
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.multi_run(1),
    can_subset=True,
    pool=FUSION_POOL,
)
def fuse_embeddings(context: AssetExecutionContext, fusion: FusionResource):
    """Fuse the partition's day for the selected strategies in one pass over S3.

    Errors of our own hierarchy (bad config, schema drift of the whole run, a concurrent writer) fail the
    run with their message, which says what to do next; a strategy that stopped alone fails the step only
    after the others have materialised; item failures are data and show in the metadata. Progress goes
    to the run's log through `context.log`.
    """
    strategies = tuple(name for name in ASSET_STRATEGIES if AssetKey(name) in context.selected_asset_keys)
    try:
        summary = pipeline.run(
            fusion.fusion_config(strategies),
            run_date(context.partition_key),
            client=fusion.client(),
            log=context.log,
        )
    except ClipfarmError as exc:
        # Another writer finishing or S3 coming back is worth a retry; bad config, drift and broken stores need a person.
        transient = isinstance(exc, ConcurrentWriteError | S3UnavailableError)
        raise Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=transient) from exc
    context.log.info("run summary\n%s", summary.to_table())
    for name in (name for name in strategies if name in summary.strategies):
        yield MaterializeResult(
            asset_key=name,
            metadata=strategy_metadata(summary, name),
            check_results=fail_rate_results(context, name, summary.strategies[name], fusion),
        )
    if summary.stopped:
        raise stopped_failure(summary.stopped)


def fail_rate_results(
    context: AssetExecutionContext, name: str, strategy: StrategySummary, fusion: FusionResource
) -> list:
    """The day's fail-rate check result, when the check is selected; it names the partition."""
    if checks.fail_rate_key(name) not in context.selected_asset_check_keys:
        return []
    return [checks.fail_rate_result(name, strategy, fusion.fail_rate_threshold, context.partition_key)]


def stopped_failure(stopped: dict[str, str]) -> Failure:
    """The step fails after the other strategies have materialised: a stopped strategy needs a person
    (`clipfarm-fusion migrate-schema`), so no retry."""
    lines = [f"{name}: {message}" for name, message in stopped.items()]
    return Failure(
        description="Stopped (nothing of theirs published; the other strategies did):\n" + "\n".join(lines),
        metadata={f"stopped/{name}": MetadataValue.text(message) for name, message in stopped.items()},
        allow_retries=False,
    )


def strategy_metadata(summary: RunSummary, name: str) -> dict[str, MetadataValue]:
    """DESIGN §7 as materialization metadata: every status gets a `status/<s>` count (zeros too, so the
    UI can plot each status across partitions), plus sizes, keys, timings and two markdown tables."""
    strategy = summary.strategies[name]
    uri = f"s3://{summary.bucket}/"
    metadata: dict[str, MetadataValue] = {
        f"status/{status}": MetadataValue.int(strategy.counts.get(status, 0))
        for status in _statuses(strategy)
    }
    metadata.update(
        {
            "run_date": MetadataValue.text(summary.run_date),
            "delta": MetadataValue.int(strategy.delta),
            "deferred": MetadataValue.int(strategy.deferred),
            "unparseable_dates": MetadataValue.int(summary.unparseable_dates),
            "fused": MetadataValue.int(strategy.fused),
            "manifest_rows_added": MetadataValue.int(strategy.manifest_added),
            "manifest_rows_updated": MetadataValue.int(strategy.manifest_updated),
            "shards_written": MetadataValue.int(len(strategy.shards_written)),
            "shard_keys": MetadataValue.json([uri + key for key in strategy.shards_written]),
            "seconds": MetadataValue.float(strategy.seconds),
            "items_per_second": MetadataValue.float(
                round(strategy.fused / strategy.seconds, 1) if strategy.seconds else 0.0
            ),
            "status_chart": MetadataValue.md(status_chart(strategy)),
            "samples": MetadataValue.md(samples_table(strategy)),
            "manifest": MetadataValue.path(uri + strategy.manifest_key),
            "schema_lock": MetadataValue.path(uri + strategy.schema_key),
            "state_db": MetadataValue.path(uri + strategy.state_key),
            "state_source": MetadataValue.text(strategy.state_source),
            "text_state": MetadataValue.text(summary.text_state),
        }
    )
    if strategy.fused_dim is not None:
        metadata["fused_dim"] = MetadataValue.int(strategy.fused_dim)
    return metadata


def _statuses(strategy: StrategySummary) -> list[str]:
    """Known statuses in contract order, then any other status the run reported."""
    return [*STATUSES, *sorted(set(strategy.counts) - set(STATUSES))]


def status_chart(strategy: StrategySummary) -> str:
    """Counts per status as a markdown table of text bars, scaled to the largest count."""
    largest = max(strategy.counts.values(), default=0)
    lines = ["| status | count | share |", "|---|---:|---|"]
    for status in _statuses(strategy):
        count = strategy.counts.get(status, 0)
        bar = "█" * (round(BAR_WIDTH * count / largest) if largest else 0)
        lines.append(f"| {status} | {count} | `{bar or '·'}` |")
    return "\n".join(lines)


def samples_table(strategy: StrategySummary) -> str:
    """Sample video_ids per status with their error text, one row per id."""
    lines = ["| status | video_id | error |", "|---|---|---|"]
    for status in _statuses(strategy):
        for video_id in strategy.samples.get(status, []):
            error = strategy.errors.get(video_id, "")
            lines.append(f"| {status} | `{_cell(video_id)}` | {_cell(error)} |")
    return "\n".join(lines) if len(lines) > 2 else "no items in this day's delta"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
