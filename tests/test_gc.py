"""`clipfarm-fusion gc` and the `gc_orphan_shards` job: orphan shards go, referenced and young ones stay."""

from datetime import UTC, date, datetime, timedelta

import pytest

from clipfarm_fusion.admin import sweep
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read.tables import read_manifest
from clipfarm_fusion.run import pipeline

from .test_cli import cli

DAY = "clipfarm/fused/{strategy}/shards/date=2026-03-01/"


def shard_keys(client, bucket: str, strategy: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"clipfarm/fused/{strategy}/shards/"
    )
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def referenced(bucket: str, strategy: str) -> set[str]:
    return set(read_manifest(strategy, bucket=bucket)["fused_key"])


@pytest.fixture
def fused(seed_day, client):
    """concat and sum_pool published for 2026-03-01 in shards of 8."""
    seeded = seed_day(videos=40)
    pipeline.run(
        seeded.config(strategies=("concat", "sum_pool"), shard_size=8), date(2026, 3, 1), client=client
    )
    return seeded


def add_orphans(client, bucket: str, strategy: str = "concat") -> list[str]:
    """Two shards nothing points to: a crashed run's later part of the day, and another day's part."""
    some_shard = sorted(referenced(bucket, strategy))[0]
    body = client.get_object(Bucket=bucket, Key=some_shard)["Body"].read()
    orphans = [
        DAY.format(strategy=strategy) + "part-0900.npz",
        f"clipfarm/fused/{strategy}/shards/date=2026-02-27/part-0000.npz",
    ]
    for key in orphans:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return orphans


@pytest.mark.s3_backends
def test_dry_run_lists_orphans_and_gc_deletes_only_them(fused, client):
    bucket = fused.bucket
    orphans = add_orphans(client, bucket)
    not_a_shard = DAY.format(strategy="concat") + "notes.txt"
    client.put_object(Bucket=bucket, Key=not_a_shard, Body=b"kept: not a part-XXXX.npz")
    before = shard_keys(client, bucket, "concat")
    sum_pool_before = shard_keys(client, bucket, "sum_pool")

    dry = cli("gc", "--strategy", "concat", "--bucket", bucket, "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert all(f"would delete: {key}" in dry.stdout for key in orphans)
    assert "would delete 2 orphan shard(s)" in dry.stdout and "dry run: nothing deleted" in dry.stdout
    assert shard_keys(client, bucket, "concat") == before

    swept = cli("gc", "--strategy", "concat", "--bucket", bucket, "--older-than", "0s")
    assert swept.returncode == 0, swept.stderr
    assert all(f"deleted: {key}" in swept.stdout for key in orphans)
    assert "deleted 2 orphan shard(s)" in swept.stdout and "bytes freed" in swept.stdout
    after = shard_keys(client, bucket, "concat")
    assert after == before - set(orphans) and not_a_shard in after
    assert referenced(bucket, "concat") <= after  # every shard the manifest points to is still there
    assert shard_keys(client, bucket, "sum_pool") == sum_pool_before  # another strategy: untouched
    assert cli("verify", "--strategy", "concat", "--bucket", bucket).returncode == 0

    again = cli("gc", "--strategy", "concat", "--bucket", bucket, "--older-than", "0s")
    assert again.returncode == 0 and "deleted 0 orphan shard(s)" in again.stdout


def test_young_orphans_are_kept_with_the_default_grace(fused, client):
    bucket = fused.bucket
    orphans = add_orphans(client, bucket)
    before = shard_keys(client, bucket, "concat")
    for flags in ((), ("--older-than", "12h"), ("--older-than", "30m")):
        result = cli("gc", "--strategy", "concat", "--bucket", bucket, *flags)
        assert result.returncode == 0, result.stderr
        assert (
            "deleted 0 orphan shard(s)" in result.stdout and "kept 2 unreferenced shard(s)" in result.stdout
        )
    assert shard_keys(client, bucket, "concat") == before
    # the same shards once a day has passed (a clock a day ahead; LastModified cannot be backdated)
    result = sweep.sweep(
        client, bucket, "clipfarm", "concat", now=datetime.now(UTC) + timedelta(days=1, minutes=1)
    )
    assert sorted(result.deleted) == sorted(orphans) and result.bytes_freed > 0
    assert shard_keys(client, bucket, "concat") == before - set(orphans)


@pytest.mark.s3_backends
def test_gc_deletes_in_batches(fused, client, monkeypatch):
    bucket = fused.bucket
    body = client.get_object(Bucket=bucket, Key=sorted(referenced(bucket, "concat"))[0])["Body"].read()
    orphans = [DAY.format(strategy="concat") + f"part-{900 + n:04d}.npz" for n in range(5)]
    for key in orphans:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    requests = []
    client.meta.events.register("before-call.s3.DeleteObjects", lambda **kwargs: requests.append(1))
    monkeypatch.setattr(sweep, "DELETE_BATCH", 2)
    result = sweep.sweep(client, bucket, "clipfarm", "concat", older_than=timedelta(0))
    assert sorted(result.deleted) == orphans and not result.errors and len(requests) == 3
    assert result.bytes_freed == 5 * len(body)


def test_gc_without_a_manifest_sweeps_nothing(bucket, client):
    key = "clipfarm/fused/concat/shards/date=2026-03-01/part-0000.npz"
    client.put_object(Bucket=bucket, Key=key, Body=b"a first run's shard, not yet committed")
    result = cli("gc", "--strategy", "concat", "--bucket", bucket, "--older-than", "0s")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert shard_keys(client, bucket, "concat") == {key}


def test_gc_usage_errors_are_exit_2(bucket):
    for age in ("1 day", "-1d", "5", "d"):
        result = cli("gc", "--strategy", "concat", "--bucket", bucket, "--older-than", age)
        assert result.returncode == 2 and "--older-than" in result.stderr
    assert cli("gc", "--bucket", bucket).returncode == 2  # --strategy is required


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("0s", timedelta(0)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("1d", timedelta(days=1)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_parse_age(text, age):
    assert sweep.parse_age(text) == age
    assert sweep.parse_age(sweep.describe_age(age)) == age


def test_parse_age_refuses_anything_else():
    for text in ("", "1", "1y", "1.5d", "-1d", "d1"):
        with pytest.raises(ConfigError):
            sweep.parse_age(text)


def test_gc_and_verify_jobs_run_over_every_strategy(fused, client, monkeypatch):
    from clipfarm_fusion.defs.definitions import defs

    monkeypatch.setenv("CLIPFARM_BUCKET", fused.bucket)
    bucket = fused.bucket
    orphans = {name: add_orphans(client, bucket, name) for name in ("concat", "sum_pool")}
    before = {name: shard_keys(client, bucket, name) for name in ("concat", "sum_pool")}
    gc_job = defs.get_job_def("gc_orphan_shards")
    config = {"ops": {"sweep_orphan_shards": {"config": {"older_than": "0s", "dry_run": True}}}}
    dry = gc_job.execute_in_process(run_config=config)
    assert dry.success and dry.output_for_node("sweep_orphan_shards")["orphans"] == 4
    assert {name: shard_keys(client, bucket, name) for name in before} == before

    young = gc_job.execute_in_process()  # the default grace: 1d
    assert young.success and young.output_for_node("sweep_orphan_shards")["kept_young"] == 4
    assert {name: shard_keys(client, bucket, name) for name in before} == before

    config["ops"]["sweep_orphan_shards"]["config"]["dry_run"] = False
    swept = gc_job.execute_in_process(run_config=config)
    assert swept.success
    totals = swept.output_for_node("sweep_orphan_shards")
    assert totals["deleted"] == 4 and totals["bytes_freed"] > 0
    for name in before:
        assert shard_keys(client, bucket, name) == before[name] - set(orphans[name])
        assert referenced(bucket, name) <= shard_keys(client, bucket, name)
    # max_pool (an asset strategy) has nothing published here: skipped, not failed
    step_metadata = [
        event.event_specific_data.metadata
        for event in swept.all_node_events
        if event.event_type_value == "STEP_OUTPUT"
    ]
    assert any("max_pool/skipped" in metadata for metadata in step_metadata)

    verify_job = defs.get_job_def("verify_published")
    verified = verify_job.execute_in_process()
    assert verified.success
    assert verified.output_for_node("verify_all_strategies") == ["concat", "sum_pool"]
    gone = sorted(referenced(bucket, "sum_pool"))[-1]
    client.delete_object(Bucket=bucket, Key=gone)
    broken = verify_job.execute_in_process(raise_on_error=False)
    assert not broken.success
    failure = next(e for e in broken.all_events if e.event_type_value == "STEP_FAILURE")
    assert gone in failure.event_specific_data.error.message or gone in str(failure.event_specific_data)


def test_schedules_are_weekly_and_stopped_by_default():
    from dagster import DefaultScheduleStatus

    from clipfarm_fusion.defs.definitions import defs

    for name, job in (
        ("gc_orphan_shards_weekly", "gc_orphan_shards"),
        ("verify_published_weekly", "verify_published"),
    ):
        schedule = defs.resolve_schedule_def(name)
        assert schedule.job_name == job and schedule.default_status == DefaultScheduleStatus.STOPPED
        assert schedule.cron_schedule.endswith("* * 0")


def test_maintain_tables_job_compacts_every_strategy_and_runs_daily_by_default(client, seed_day, monkeypatch):
    """The `maintain_tables` job (daily schedule, RUNNING by default) compacts the manifest and state
    tables of every asset strategy, leaves their rows as they were, and skips strategies with no tables."""
    import pandas as pd
    from dagster import DefaultScheduleStatus

    from clipfarm_fusion import read_state
    from clipfarm_fusion.defs.definitions import defs

    from .test_upgrade import add_day

    seeded = seed_day(videos=20, mix={"full": 1.0})
    pipeline.run(seeded.config(strategies=("concat", "sum_pool")), date(2026, 3, 1))
    for n, prefix in enumerate(("b", "c")):  # each day's upsert only inserts: one more small file per table
        add_day(client, seeded, videos=10, prefix=prefix, run_date=date(2026, 3, 2 + n))
        pipeline.run(seeded.config(strategies=("concat", "sum_pool")), date(2026, 3, 2 + n))
    before = {
        s: (read_manifest(s, bucket=seeded.bucket), read_state(s, bucket=seeded.bucket))
        for s in ("concat", "sum_pool")
    }
    monkeypatch.setenv("CLIPFARM_BUCKET", seeded.bucket)
    result = defs.get_job_def("maintain_tables").execute_in_process(
        run_config={"ops": {"maintain_all_tables": {"config": {"retention": "0s"}}}}
    )
    assert result.success
    metadata = next(
        event.event_specific_data.metadata
        for event in result.all_node_events
        if event.event_type_value == "STEP_OUTPUT"
    )
    assert {"concat/manifest", "concat/fusion_concat", "sum_pool/fusion_sum_pool"} <= set(metadata)
    assert not any(key.startswith("max_pool/") for key in metadata)
    for name in ("concat/manifest", "concat/fusion_concat", "sum_pool/manifest"):
        assert metadata[name].value["files_compacted"] == 3 and metadata[name].value["files_written"] == 1
        assert metadata[name].value["files_vacuumed"] == 3
    for strategy, (rows, items) in before.items():
        pd.testing.assert_frame_equal(read_manifest(strategy, bucket=seeded.bucket), rows)
        pd.testing.assert_frame_equal(read_state(strategy, bucket=seeded.bucket), items)
    schedule = defs.resolve_schedule_def("maintain_tables_daily")
    assert schedule.job_name == "maintain_tables" and schedule.default_status == DefaultScheduleStatus.RUNNING
