"""Asset checks: thin wrappers over `clipfarm_fusion.read.checks`.

The four output checks are blocking: a strategy whose lock, manifest keys or pointers are wrong must
not feed anything downstream. They look at the whole published strategy (manifest and lock are not
per-day), so they are unpartitioned and read the manifest once per strategy for all four. The fail
rate belongs to one day's run, so the fusion asset itself reports it from its run summary, as a
non-blocking warning: failed items are retried tomorrow, the rest of the day is good.

Every result run inside a partitioned run names that partition (metadata `partition` and the description),
so the UI says which day a result follows. There, `manifest_pointers_resolve` reads every shard the
manifest references for that day (a sample can miss the one shard a day lost), plus a sample of older
rows; the whole store is checked by the `verify_published` job (`jobs.py`).

A day's `commit` runs the same output checks (`gate`) before it materialises the day, since a backfill
starts the next day as soon as a day is materialised; `published_outputs` runs them again after it, or
on their own from the UI.
"""

from collections.abc import Iterable, Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    multi_asset_check,
)

from clipfarm_fusion.defs.resources import ASSET_STRATEGIES, FusionResource
from clipfarm_fusion.errors import StoreError
from clipfarm_fusion.read import checks as read_checks
from clipfarm_fusion.run.summary import StrategySummary

FAIL_RATE = "fail_rate_below_threshold"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
OUTPUT_CHECKS: dict[str, str] = {
    "schema_matches_output": "schema.json is self-consistent and equals the manifest's fused_dim and the "
    "newest shard's vector width.",
    "manifest_keys_unique": "The manifest holds one row per (video_id, source_hash).",
    "manifest_pointers_resolve": "In a partitioned run, every shard the manifest references under "
    "date=<partition>/ exists (one LIST) and loads back (one GET each), plus the shards of a sample of "
    "pointer_sample_size older rows; every row pointing into a shard read is checked: right video_id at "
    "shard_idx, shard_n rows, right vector width. Unpartitioned: the sample only.",
}


def fail_rate_spec(strategy: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        FAIL_RATE,
        asset=strategy,
        description="This day's fail + fail_terminal share of the delta stays below the resource's "
        "fail_rate_threshold (warning only).",
    )


def fail_rate_key(strategy: str) -> AssetCheckKey:
    return fail_rate_spec(strategy).key


def fail_rate_result(
    strategy: str, summary: StrategySummary, threshold: float, partition: str | None
) -> AssetCheckResult:
    passed, metadata = read_checks.fail_rate(summary.counts, summary.delta, threshold)
    verdict = "below" if passed else "at or above"
    text = (
        f"{metadata['failed']} of {metadata['delta']} items failed (fail rate {metadata['fail_rate']}), "
        f"{verdict} the threshold {threshold}"
    )
    return AssetCheckResult(
        asset_key=strategy,
        check_name=FAIL_RATE,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        metadata=_with_partition(metadata, partition),
        description=_described(text, partition),
    )


def run_partition(context: AssetCheckExecutionContext) -> str | None:
    """The partition of the run a check runs in (the unpartitioned output checks run in the same run as
    the day they follow), so the UI can say which day's publication a result is about."""
    tags = context.run.tags
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG]
    # A backfill run of one partition (BackfillPolicy.multi_run(1)) may carry a one-day range instead.
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    return start if start is not None and start == end else None


def _with_partition(metadata: dict[str, object], partition: str | None) -> dict[str, object]:
    return {"partition": partition, **metadata} if partition else metadata


def _described(text: str, partition: str | None) -> str:
    return f"Partition {partition}: {text}" if partition else text


@multi_asset_check(
    specs=[
        AssetCheckSpec(name, asset=strategy, description=description, blocking=True)
        for strategy in ASSET_STRATEGIES
        for name, description in OUTPUT_CHECKS.items()
    ],
    can_subset=True,
)
def published_outputs(context: AssetCheckExecutionContext, fusion: FusionResource):
    """Run the selected output checks, reading each strategy's manifest and lock once."""
    client = fusion.client()
    selected = context.selected_asset_check_keys
    partition = run_partition(context)
    for strategy in ASSET_STRATEGIES:
        names = [name for name in OUTPUT_CHECKS if AssetCheckKey(AssetKey(strategy), name) in selected]
        if names:
            yield from output_results(client, fusion, strategy, names, partition)


def output_results(
    client, fusion: FusionResource, strategy: str, names: Iterable[str], partition: str | None
) -> Iterator[AssetCheckResult]:
    """The output checks `names` of one strategy, its manifest and lock read once."""
    try:
        published = read_checks.load_published(client, fusion.bucket, fusion.root, strategy)
    except StoreError as exc:  # an unreadable manifest fails every check of it, saying why
        published, unreadable = None, read_checks.Verdict(False, {"problem": str(exc)})
    for name in names:
        passed, metadata = (
            unreadable if published is None else _verdict(name, client, published, fusion, partition)
        )
        text = "passed" if passed else f"failed: {_finding(metadata)}"
        yield AssetCheckResult(
            asset_key=strategy,
            check_name=name,
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            metadata=_with_partition(metadata, partition),
            description=_described(f"{strategy} {name} {text}", partition),
        )


def gate(
    fusion: FusionResource, strategies: Iterable[str], partition: str
) -> dict[str, list[AssetCheckResult]]:
    """Every output check of each of `strategies`, as `commit` runs them on the day it has just
    published and before it materialises it: a day is materialised only once its blocking checks pass,
    so a backfill (which starts day N+1 as soon as day N is materialised, whatever happens later in day
    N's run) never starts the day after a failed one."""
    client = fusion.client()
    return {
        strategy: list(output_results(client, fusion, strategy, OUTPUT_CHECKS, partition))
        for strategy in strategies
    }


def as_evaluation(result: AssetCheckResult) -> AssetCheckEvaluation:
    """`result` as the evaluation `published_outputs` records, for the step that ran the check in its
    place (`commit`, when it fails and the `published_outputs` step downstream of it is skipped)."""
    return AssetCheckEvaluation(
        asset_key=result.asset_key,
        check_name=result.check_name,
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
        description=result.description,
        blocking=True,
    )


def _finding(metadata: dict[str, object]) -> str:
    """One line for the description of a failed output check; the details stay in the metadata."""
    if "problem" in metadata:
        return str(metadata["problem"])
    if metadata.get("duplicate_keys"):
        return f"{metadata['duplicate_keys']} (video_id, source_hash) keys have more than one manifest row"
    if metadata.get("disagreements"):
        return f"{metadata['disagreements']} fused video(s) where state and manifest disagree, e.g. {metadata['sample'][:3]}"
    if metadata.get("bad_pointers"):
        parts = []
        if metadata.get("missing_shard_count"):
            named = ", ".join(metadata["missing_shards"])
            more = metadata["missing_shard_count"] - len(metadata["missing_shards"])
            parts.append(
                f"{metadata['missing_shard_count']} shard(s) missing: {named}"
                + (f" and {more} more" if more else "")
            )
        for broken in metadata.get("broken_shards", [])[:3]:
            parts.append(f"{broken['fused_key']}: {broken['problem']}")
        return (
            f"{metadata['bad_pointers']} of {metadata['rows_checked']} manifest rows checked in "
            f"{metadata['shards_checked']} shards do not resolve; " + "; ".join(parts)
        )
    return "see the metadata"


def _verdict(
    name: str, client, published: read_checks.Published, fusion: FusionResource, partition: str | None
) -> read_checks.Verdict:
    if name == "manifest_keys_unique":
        return read_checks.manifest_keys_unique(published)
    if name == "manifest_pointers_resolve":
        return read_checks.manifest_pointers_resolve(
            client, published, fusion.pointer_sample_size, fusion.fetch_threads, partition
        )
    if name == "state_matches_manifest":
        return read_checks.state_matches_manifest(client, published, partition)
    return read_checks.schema_matches_output(client, published)
