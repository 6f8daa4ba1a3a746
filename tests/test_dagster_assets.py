"""The Dagster assets as the UI and the scheduler run them: one partition = one plan -> fuse_chunk x N ->
commit pinned to that date, metadata per strategy, days in order, errors that fail the run with their
message. These run in process (`materialize`); tests/test_dagster_fanout.py runs the executors."""

import io
import shutil
import tempfile
import uuid
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    TimeWindowPartitionMapping,
    build_schedule_context,
    materialize,
    validate_run_config,
)

import clipfarm_fusion
from clipfarm_fusion.core.kernels import DEFAULT_STRATEGIES as STRATEGY_NAMES
from clipfarm_fusion.core.kernels import FusionOptions
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.checks import published_outputs
from clipfarm_fusion.defs.definitions import defs
from clipfarm_fusion.defs.ops import FUSION_POOL
from clipfarm_fusion.defs.resources import FusionResource
from clipfarm_fusion.defs.schedules import fuse_daily_schedule
from clipfarm_fusion.defs.upstream import UPSTREAM_SPECS
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.read import tables
from clipfarm_fusion.read.failures import FAILED_OR_WAITING
from clipfarm_fusion.stores import s3io, schema_lock, shards

LAYOUT = Layout("clipfarm")
UPSTREAM_KEYS = {
    AssetKey(["embeddings", "video"]),
    AssetKey(["embeddings", "audio"]),
    AssetKey(["embeddings", "text"]),
    AssetKey("metadata_horizon"),
    AssetKey("text_stage_state"),
}


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


@pytest.mark.s3_backends
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
        assert values["manifest"] == f"s3://{seeded.bucket}/{LAYOUT.manifest_table_key(strategy)}"
        assert values["state_table"] == f"s3://{seeded.bucket}/{LAYOUT.state_table_key(strategy)}"
        waiting = sum(n for status, n in expected.items() if status in FAILED_OR_WAITING)
        command = f"inspect --strategy {strategy} --bucket {seeded.bucket} --root clipfarm --date 2026-03-01"
        assert f"{waiting} items of this day failed or wait" in values["failed_or_waiting"]
        assert f"`clipfarm-fusion {command} --failed`" in values["failed_or_waiting"]
        assert "| fail |" in values["status_chart"] and "█" in values["status_chart"]
        assert "truncated" in values["samples"] and values["items_per_second"] > 0

        table = tables.manifest_table(client, seeded.bucket, "clipfarm", strategy)
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
    for evaluation in checks.values():  # the unpartitioned output checks too: they follow this day's run
        assert evaluation.metadata["partition"].value == "2026-03-01"
        assert evaluation.description.startswith("Partition 2026-03-01: ")


def test_single_strategy_materialises_only_that_strategy(seed_day, client):
    seeded = seed_day(videos=20)
    result = materialize(
        [fuse_embeddings], partition_key="2026-03-01", resources=fusion(seeded), selection=["sum_pool"]
    )
    assert result.success and set(materialized(result)) == {"sum_pool"}
    assert tables.manifest_table(client, seeded.bucket, "clipfarm", "sum_pool") is not None
    assert tables.manifest_table(client, seeded.bucket, "clipfarm", "concat") is None


def test_days_run_in_order_each_see_only_their_own_horizon(seed_day, client, postgres_dagster_home):
    """A backfill of two days, day by day, on the deployment's instance (infra/dagster.yaml, Postgres),
    which then knows both partitions of every strategy as materialised."""
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

    with DagsterInstance.get() as instance:
        results = [
            materialize(
                [fuse_embeddings], partition_key=day.isoformat(), resources=fusion(seeded), instance=instance
            )
            for day in (first, second)
        ]
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        for strategy in STRATEGY_NAMES:
            assert instance.get_materialized_partitions(AssetKey(strategy)) == {"2026-03-01", "2026-03-02"}

    for result, day, prefix in zip(results, (first, second), ("a", "b"), strict=True):
        assert result.success
        assert materialized(result)["concat"]["delta"] == 20
        ids = shard_ids(client, seeded.bucket, "concat", day)
        assert len(ids) == 20 and all(v.startswith(prefix) for v in ids)
    table = tables.manifest_table(client, seeded.bucket, "clipfarm", "concat")
    assert table.num_rows == 40


def test_backfills_go_day_by_day_oldest_first_committing_in_one_pool():
    """Each day depends on the day before (the state DB carries over), so a backfill runs one day per run,
    oldest first, never starting a day before its predecessor has materialised. Only the commit holds
    the pool: the chunks of a day fuse side by side, one day commits at a time."""
    assert fuse_embeddings.backfill_policy == BackfillPolicy.multi_run(1)
    assert fuse_embeddings.can_subset
    pools = {node.name: node.definition.pool for node in fuse_embeddings.node_def.nodes}
    assert pools == {"plan": None, "fan_out": None, "fuse_chunk": None, "commit": FUSION_POOL}
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


def test_upstream_inputs_are_external_assets_upstream_of_every_fused_asset():
    graph = defs.resolve_asset_graph()
    for spec in UPSTREAM_SPECS:
        node = graph.get(spec.key)
        assert not node.is_materializable and not node.is_executable and node.group_name == "upstream"
        assert spec.description and spec.metadata["path_pattern"].value.startswith("s3://<bucket>/<root>/")
    patterns = {spec.key: spec.metadata["path_pattern"].value for spec in UPSTREAM_SPECS}
    assert (
        patterns[AssetKey(["embeddings", "video"])] == "s3://<bucket>/<root>/embeddings/video/<video_id>.npy"
    )
    assert patterns[AssetKey("text_stage_state")] == "s3://<bucket>/<root>/state/text_downloader.sqlite"
    for strategy in STRATEGY_NAMES:
        key = AssetKey(strategy)
        assert graph.get(key).parent_keys == UPSTREAM_KEYS | {key}
    assert {k for k in graph.materializable_asset_keys} == {AssetKey(s) for s in STRATEGY_NAMES}


def test_endpoint_from_the_resource_reaches_s3_without_the_aws_env(seed_day, s3_endpoint, monkeypatch):
    seeded = seed_day(videos=10)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert FusionResource(bucket=seeded.bucket).client().meta.endpoint_url != s3_endpoint
    resources = fusion(seeded, endpoint_url=s3_endpoint, region_name="us-east-1")
    assert resources["fusion"].client().meta.endpoint_url == s3_endpoint
    result = materialize(
        [fuse_embeddings], partition_key="2026-03-01", resources=resources, selection=["sum_pool"]
    )
    assert result.success and materialized(result)["sum_pool"]["delta"] == 10


def test_nothing_imports_dagster_aws():
    package = Path(clipfarm_fusion.__file__).parent
    assert not [p for p in package.rglob("*.py") if "dagster_aws" in p.read_text()]


def test_a_strategy_that_must_stop_fails_alone_and_the_others_materialise(seed_day, client):
    """concat's lock says 999-d video: concat stops (nothing of it written), the other two publish, and
    the step fails naming concat, so the UI shows two materialisations and one failed asset."""
    seeded = seed_day(videos=20)
    wrong = schema_lock.SchemaLock.build("concat", (999, 768, 768), FusionOptions())
    client.put_object(Bucket=seeded.bucket, Key=LAYOUT.schema_key("concat"), Body=wrong.to_json())
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [fuse_embeddings],
            partition_key="2026-03-01",
            resources=fusion(seeded),
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        assert set(materialized(result)) == {"sum_pool", "max_pool"}
        assert instance.get_latest_materialization_event(AssetKey("concat")) is None
        assert instance.get_latest_materialization_event(AssetKey("sum_pool")) is not None
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data
    assert "concat: " in failure.description and "999" in failure.description
    assert set(failure.metadata) == {"stopped/concat"}
    assert tables.manifest_table(client, seeded.bucket, "clipfarm", "concat") is None
    assert tables.manifest_table(client, seeded.bucket, "clipfarm", "max_pool") is not None


@pytest.fixture
def fresh_bucket(client):
    """A bucket name no other test uses, and the default state dir of that bucket removed afterwards."""
    name = f"dagster-recreated-{uuid.uuid4().hex[:12]}"
    yield name
    shutil.rmtree(Path(tempfile.gettempdir(), "clipfarm_fusion", name), ignore_errors=True)


def test_run_config_setting_one_field_keeps_the_bucket_from_the_environment(
    client, fresh_bucket, monkeypatch
):
    """The launchpad's case: run config that sets chunk_size alone, on the code location's own resource;
    the bucket is still CLIPFARM_BUCKET, read when the run starts."""
    day, objects = synthetic.make_day(12, mix={"full": 1.0})
    synthetic.seed(client, fresh_bucket, "clipfarm", day, objects, threads=8)
    monkeypatch.setenv("CLIPFARM_BUCKET", fresh_bucket)
    run_config = {"resources": {"fusion": {"config": {"chunk_size": 4}}}}
    job = defs.resolve_job_def("fuse_daily")
    resolved = validate_run_config(job, run_config)["resources"]["fusion"]["config"]
    assert resolved["bucket"] == fresh_bucket and resolved["chunk_size"] == 4

    result = materialize(
        [fuse_embeddings],
        partition_key="2026-03-01",
        resources=defs.resources,
        run_config=run_config,
        selection=["concat"],
    )
    assert result.success
    chunks = {e.step_key for e in result.get_step_success_events() if "fuse_chunk" in e.step_key}
    assert len(chunks) == 3  # 12 videos in chunks of 4: the one field took effect
    assert tables.manifest_table(client, fresh_bucket, "clipfarm", "concat").num_rows == 12


def test_a_recreated_bucket_fuses_again_with_the_default_state_dir(client, fresh_bucket):
    """The default state dir is keyed by bucket name only; a bucket deleted and recreated under the same
    name must not be mistaken for the old one whose state the working copy remembers."""
    resources = {"fusion": FusionResource(bucket=fresh_bucket, shard_size=16, fetch_threads=8)}

    def seed_and_materialize() -> dict[str, dict]:
        client.create_bucket(Bucket=fresh_bucket)
        day, objects = synthetic.make_day(20)
        synthetic.seed(client, fresh_bucket, "clipfarm", day, objects, threads=8)
        result = materialize([fuse_embeddings], partition_key="2026-03-01", resources=resources)
        assert result.success
        return materialized(result)

    first = seed_and_materialize()
    assert first["concat"]["fused"] > 0
    for key in s3io.list_keys(client, fresh_bucket, ""):
        client.delete_object(Bucket=fresh_bucket, Key=key)
    client.delete_bucket(Bucket=fresh_bucket)

    second = seed_and_materialize()
    assert {name: values["fused"] for name, values in second.items()} == {
        name: values["fused"] for name, values in first.items()
    }
