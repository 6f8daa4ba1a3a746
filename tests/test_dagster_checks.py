"""The blocking output checks as Dagster runs them, after the manifest has been damaged behind its back."""

import pyarrow as pa
from dagster import AssetCheckKey, AssetCheckSeverity, AssetKey, AssetSelection, materialize

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.checks import OUTPUT_CHECKS, published_outputs
from clipfarm_fusion.defs.resources import FusionResource
from clipfarm_fusion.read import tables

from .conftest import replace_manifest


def test_checks_fail_on_a_corrupted_manifest_and_block(seed_day, client):
    seeded = seed_day(videos=20)
    resources = {
        "fusion": FusionResource(
            bucket=seeded.bucket, state_dir=str(seeded.state_dir), shard_size=8, fetch_threads=8
        )
    }
    assert materialize(
        [fuse_embeddings], partition_key="2026-03-01", resources=resources, selection=["concat"]
    ).success

    table = tables.manifest_table(client, seeded.bucket, "clipfarm", "concat")
    bad_pointer = table.slice(0, 1).set_column(
        table.schema.get_field_index("shard_idx"), "shard_idx", pa.array([999], pa.int32())
    )
    replace_manifest(client, seeded.bucket, "clipfarm", "concat", pa.concat_tables([table, bad_pointer]))

    checks = [AssetCheckKey(AssetKey("concat"), name) for name in OUTPUT_CHECKS]
    result = materialize(
        [fuse_embeddings, published_outputs],
        resources=resources,
        selection=AssetSelection.checks(*checks),
        raise_on_error=False,
    )
    assert not result.success  # a failed blocking check fails its step: nothing downstream may run
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == set(OUTPUT_CHECKS)
    assert evaluations["schema_matches_output"].passed
    for name in ("manifest_keys_unique", "manifest_pointers_resolve"):
        assert not evaluations[name].passed
        assert evaluations[name].severity == AssetCheckSeverity.ERROR and evaluations[name].blocking
    assert evaluations["manifest_keys_unique"].metadata["duplicate_keys"].value == 1
    assert evaluations["manifest_keys_unique"].description == (
        "concat manifest_keys_unique failed: 1 (video_id, source_hash) keys have more than one manifest row"
    )
    assert "partition" not in evaluations["schema_matches_output"].metadata  # an unpartitioned run
    assert "out of range" in str(evaluations["manifest_pointers_resolve"].metadata["broken_shards"].value)


def test_pointer_check_in_a_partitioned_run_reads_every_shard_of_the_day(seed_day, client):
    """A day in ~12 shards of 4 and a pointer sample of one row: the check in the day's run still reads
    every shard of the day, so the one deleted shard fails it, named."""
    seeded = seed_day(videos=60)
    resources = {
        "fusion": FusionResource(
            bucket=seeded.bucket,
            state_dir=str(seeded.state_dir),
            shard_size=4,
            fetch_threads=4,
            pointer_sample_size=1,
        )
    }
    pointers = AssetCheckKey(AssetKey("concat"), "manifest_pointers_resolve")
    first = materialize(
        [fuse_embeddings, published_outputs],
        partition_key="2026-03-01",
        resources=resources,
        selection=AssetSelection.assets("concat"),  # with its checks
    )
    assert first.success
    evaluations = {e.check_name: e for e in first.get_asset_check_evaluations()}
    passed = evaluations["manifest_pointers_resolve"]
    table = tables.manifest_table(client, seeded.bucket, "clipfarm", "concat")
    keys = sorted(set(table["fused_key"].to_pylist()))
    assert len(keys) >= 10 and passed.passed
    assert passed.metadata["shards_checked"].value == len(keys) == passed.metadata["partition_shards"].value

    gone = keys[-2]
    client.delete_object(Bucket=seeded.bucket, Key=gone)
    # the day again (nothing left to fuse), and its checks, in the day's partitioned run
    result = materialize(
        [fuse_embeddings, published_outputs],
        partition_key="2026-03-01",
        resources=resources,
        selection=AssetSelection.assets("concat"),
        raise_on_error=False,
    )
    assert not result.success  # the blocking check failed
    # ... in the commit step, before the materialization, which is never recorded: nothing waiting for
    # the day (the next day of a backfill) starts. The commit step records the checks' evaluations.
    assert not result.get_asset_materialization_events()
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "fuse_embeddings.commit"
    assert set(failure.step_failure_data.user_failure_data.metadata) == {"blocked/concat"}
    evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}[pointers.name]
    assert not evaluation.passed and evaluation.blocking
    assert evaluation.metadata["partition"].value == "2026-03-01"
    assert evaluation.metadata["missing_shards"].value == [gone]
    assert evaluation.metadata["shards_checked"].value == len(keys)
    assert evaluation.description.startswith("Partition 2026-03-01: concat manifest_pointers_resolve failed")
    assert f"1 shard(s) missing: {gone}" in evaluation.description


def test_an_unreadable_manifest_fails_every_check_saying_why(bucket, client):
    """A seed-era fused_manifest.parquet that no run has imported yet is read in place: unreadable, it
    fails every check, saying why."""
    key = Layout("clipfarm").manifest_key("concat")
    client.put_object(Bucket=bucket, Key=key, Body=b"not parquet")
    checks = [AssetCheckKey(AssetKey("concat"), name) for name in OUTPUT_CHECKS]
    result = materialize(
        [fuse_embeddings, published_outputs],
        resources={"fusion": FusionResource(bucket=bucket)},
        selection=AssetSelection.checks(*checks),
        raise_on_error=False,
    )
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == set(OUTPUT_CHECKS)
    assert all(not e.passed and "not a readable fused manifest" in e.description for e in evaluations)
