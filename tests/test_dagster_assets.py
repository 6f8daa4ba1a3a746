"""The Dagster assets as the UI and the scheduler run them: one partition = one pipeline.run() pinned to
that date, metadata per strategy, days in order, errors that fail the run with their message."""

import io
from collections import Counter
from datetime import UTC, date, datetime

import pandas as pd
from dagster import AssetKey, BackfillPolicy, TimeWindowPartitionMapping, build_schedule_context, materialize

from clipfarm_fusion import manifest, s3io, schema_lock, shards, synthetic
from clipfarm_fusion.defs.assets import FUSION_POOL, fuse_embeddings
from clipfarm_fusion.defs.checks import published_outputs
from clipfarm_fusion.defs.definitions import defs
from clipfarm_fusion.defs.resources import FusionResource
from clipfarm_fusion.defs.schedules import fuse_daily_schedule
from clipfarm_fusion.fuse import DEFAULT_STRATEGIES as STRATEGY_NAMES
from clipfarm_fusion.layout import Layout

LAYOUT = Layout("clipfarm")


def fusion(seeded, **overrides) -> dict[str, FusionResource]:
    options = dict(
        bucket=seeded.bucket,
        root=seeded.root,
        state_dir=str(seeded.state_dir),
        shard_size=16,
        fetch_threads=8,
    )
    return {"fusion": FusionResource(**options | overrides)}


def materialized(result) -> dict[str, dict]:
    return {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


def shard_ids(client, bucket: str, strategy: str, day: date) -> list[str]:
    keys = s3io.list_keys(client, bucket, LAYOUT.shard_prefix(strategy, day))
    return [
        str(v) for key in keys for v in shards.decode(s3io.get_object(client, bucket, key).body)["video_ids"]
    ]


def test_partition_materialises_all_strategies_with_metadata(seed_day, client):
    seeded = seed_day(videos=60)
    result = materialize(
        [fuse_embeddings, published_outputs], partition_key="2026-03-01", resources=fusion(seeded)
    )
    assert result.success
    expected = Counter(seeded.day.expected_status().values())
    fused = expected["success_full"] + expected["success_text_placeholder"]
    metadata = materialized(result)
    assert set(metadata) == set(STRATEGY_NAMES)
    for strategy, values in metadata.items():
        counts = {k.removeprefix("status/"): v for k, v in values.items() if k.startswith("status/") and v}
        assert counts == dict(expected)
        assert values["delta"] == 60 and values["fused"] == fused
        assert values["manifest_rows_added"] == fused and values["manifest_rows_updated"] == 0
        assert values["shards_written"] == len(values["shard_keys"]) > 1
        assert values["manifest"] == f"s3://{seeded.bucket}/{LAYOUT.manifest_key(strategy)}"
        assert "| fail |" in values["status_chart"] and "█" in values["status_chart"]
        assert "truncated" in values["samples"] and values["items_per_second"] > 0

        table, _ = manifest.read(client, seeded.bucket, LAYOUT.manifest_key(strategy))
        lock = schema_lock.read(client, seeded.bucket, LAYOUT.schema_key(strategy))
        assert table.num_rows == fused and lock.fused_dim == values["fused_dim"]
        assert {k.split("/")[-2] for k in table["fused_key"].to_pylist()} == {"date=2026-03-01"}
        assert sorted(shard_ids(client, seeded.bucket, strategy, date(2026, 3, 1))) == sorted(
            table["video_id"].to_pylist()
        )
    assert metadata["concat"]["fused_dim"] == 2305 and metadata["max_pool"]["fused_dim"] == 769
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    assert len(checks) == 12
    assert all(e.passed for (_, name), e in checks.items() if name != "fail_rate_below_threshold")
    assert checks[("concat", "fail_rate_below_threshold")].severity.value == "WARN"


def test_single_strategy_materialises_only_that_strategy(seed_day, client):
    seeded = seed_day(videos=20)
    result = materialize(
        [fuse_embeddings], partition_key="2026-03-01", resources=fusion(seeded), selection=["sum_pool"]
    )
    assert result.success and set(materialized(result)) == {"sum_pool"}
    assert manifest.read(client, seeded.bucket, LAYOUT.manifest_key("sum_pool"))[0] is not None
    assert manifest.read(client, seeded.bucket, LAYOUT.manifest_key("concat"))[0] is None


def test_days_run_in_order_each_see_only_their_own_horizon(seed_day, client):
    first, second = date(2026, 3, 1), date(2026, 3, 2)
    seeded = seed_day(videos=20, run_date=first, prefix="a", mix={"full": 1.0})
    later, objects = synthetic.make_day(20, run_date=second, prefix="b", mix={"full": 1.0})
    synthetic.seed(client, seeded.bucket, "clipfarm", later, objects, threads=8)
    # One horizon file spanning both days; the second day's "?old" rows (captured before day one) would
    # rightly belong to day one's horizon, so they are left out to keep the days disjoint.
    rows = [pd.read_csv(io.BytesIO(day.metadata_csv)) for day in (seeded.day, later)]
    rows[1] = rows[1][~rows[1]["url"].str.endswith("?old")]
    horizon = pd.concat(rows).to_csv(index=False).encode()
    client.put_object(Bucket=seeded.bucket, Key=LAYOUT.metadata_key(), Body=horizon)

    results = [
        materialize([fuse_embeddings], partition_key=day.isoformat(), resources=fusion(seeded))
        for day in (first, second)
    ]

    for result, day, prefix in zip(results, (first, second), ("a", "b"), strict=True):
        assert result.success
        assert materialized(result)["concat"]["delta"] == 20
        ids = shard_ids(client, seeded.bucket, "concat", day)
        assert len(ids) == 20 and all(v.startswith(prefix) for v in ids)
    table, _ = manifest.read(client, seeded.bucket, LAYOUT.manifest_key("concat"))
    assert table.num_rows == 40


def test_backfills_go_day_by_day_oldest_first_in_one_pool():
    """Each day depends on the day before (the state DB carries over), so a backfill runs one day per run,
    oldest first, never starting a day before its predecessor has materialised."""
    assert fuse_embeddings.backfill_policy == BackfillPolicy.multi_run(1)
    assert fuse_embeddings.can_subset and fuse_embeddings.op.pool == FUSION_POOL
    graph = defs.resolve_asset_graph()
    for strategy in STRATEGY_NAMES:
        key = AssetKey(strategy)
        assert graph.get(key).has_self_dependency
        mapping = graph.get_partition_mapping(key, key)
        assert isinstance(mapping, TimeWindowPartitionMapping)
        assert (mapping.start_offset, mapping.end_offset) == (-1, -1)


def test_our_errors_fail_the_run_with_their_message(seed_day):
    seeded = seed_day(videos=5)
    missing = f"s3://{seeded.bucket}/clipfarm/metadata/nowhere.csv"
    result = materialize(
        [fuse_embeddings],
        partition_key="2026-03-01",
        resources=fusion(seeded, metadata=missing),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("ConfigError:") and "nowhere.csv" in message


def test_schedule_fuses_yesterday():
    context = build_schedule_context(scheduled_execution_time=datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    schedule = defs.resolve_schedule_def(fuse_daily_schedule.name)
    requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2026-03-01"]
    assert schedule.cron_schedule == "0 2 * * *" and schedule.job_name == "fuse_daily"
