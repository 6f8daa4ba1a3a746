"""The blocking output checks as Dagster runs them, after the manifest has been damaged behind its back."""

import pyarrow as pa
from dagster import AssetCheckKey, AssetCheckSeverity, AssetKey, AssetSelection, materialize

from clipfarm_fusion import manifest
from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.checks import OUTPUT_CHECKS, published_outputs
from clipfarm_fusion.defs.resources import FusionResource
from clipfarm_fusion.layout import Layout


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

    key = Layout("clipfarm").manifest_key("concat")
    table, _ = manifest.read(client, seeded.bucket, key)
    bad_pointer = table.slice(0, 1).set_column(
        table.schema.get_field_index("shard_idx"), "shard_idx", pa.array([999], pa.int32())
    )
    client.put_object(
        Bucket=seeded.bucket, Key=key, Body=manifest.encode(pa.concat_tables([table, bad_pointer]))
    )

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
    assert "out of range" in str(evaluations["manifest_pointers_resolve"].metadata["sample"].value)
