"""Asset checks: thin wrappers over `clipfarm_fusion.verify`.

The three output checks are blocking: a strategy whose lock, manifest keys or pointers are wrong must
not feed anything downstream. They look at the whole published strategy (manifest and lock are not
per-day), so they are unpartitioned and read the manifest once per strategy for all three. The fail
rate belongs to one day's run, so the fusion asset itself reports it from its run summary, as a
non-blocking warning: failed items are retried tomorrow, the rest of the day is good.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    multi_asset_check,
)

from .. import verify
from ..summary import StrategySummary
from .resources import ASSET_STRATEGIES, FusionResource

FAIL_RATE = "fail_rate_below_threshold"
OUTPUT_CHECKS: dict[str, str] = {
    "schema_matches_output": "schema.json is self-consistent and equals the manifest's fused_dim and the "
    "newest shard's vector width.",
    "manifest_keys_unique": "The manifest holds one row per (video_id, source_hash).",
    "manifest_pointers_resolve": "A sample of manifest rows load back from their shards: right video_id at "
    "shard_idx, right vector width.",
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


def fail_rate_result(strategy: str, summary: StrategySummary, threshold: float) -> AssetCheckResult:
    passed, metadata = verify.fail_rate(summary.counts, summary.delta, threshold)
    return AssetCheckResult(
        asset_key=strategy,
        check_name=FAIL_RATE,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
    )


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
    for strategy in ASSET_STRATEGIES:
        names = [name for name in OUTPUT_CHECKS if AssetCheckKey(AssetKey(strategy), name) in selected]
        if not names:
            continue
        published = verify.read_published(client, fusion.bucket, fusion.root, strategy)
        for name in names:
            passed, metadata = _verdict(name, client, published, fusion)
            yield AssetCheckResult(
                asset_key=strategy,
                check_name=name,
                passed=passed,
                severity=AssetCheckSeverity.ERROR,
                metadata=metadata,
            )


def _verdict(name: str, client, published: verify.Published, fusion: FusionResource) -> verify.Verdict:
    if name == "manifest_keys_unique":
        return verify.manifest_keys_unique(published)
    if name == "manifest_pointers_resolve":
        return verify.manifest_pointers_resolve(
            client, published, fusion.pointer_sample_size, fusion.fetch_threads
        )
    return verify.schema_matches_output(client, published)
