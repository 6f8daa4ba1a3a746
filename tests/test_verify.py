"""The output checks on a strategy published by a real run, then corrupted one way at a time."""

from dataclasses import replace
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from clipfarm_fusion import manifest, pipeline, verify
from clipfarm_fusion.layout import Layout

LAYOUT = Layout("clipfarm")


@pytest.fixture
def published(seed_day, client):
    """concat published for 2026-03-01 in shards of 8, and a way to re-read it after corrupting it."""
    seeded = seed_day(videos=30)
    pipeline.run(seeded.config(strategies=("concat",), shard_size=8), date(2026, 3, 1), client=client)
    return lambda: verify.read_published(client, seeded.bucket, "clipfarm", "concat")


def rewrite_manifest(client, outputs: verify.Published, table: pa.Table) -> None:
    client.put_object(Bucket=outputs.bucket, Key=outputs.manifest_key, Body=manifest.encode(table))


def with_column(table: pa.Table, name: str, values: list) -> pa.Table:
    return table.set_column(
        table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type)
    )


def test_a_fresh_publication_passes_every_check(published, client):
    outputs = published()
    assert verify.schema_matches_output(client, outputs).passed
    assert verify.manifest_keys_unique(outputs).passed
    result = verify.manifest_pointers_resolve(client, outputs, sample_size=10)
    assert result.passed and result.metadata["sampled_rows"] == 10 and result.metadata["shards_read"] > 1


def test_nothing_published_yet_passes(client, bucket):
    outputs = verify.read_published(client, bucket, "clipfarm", "concat")
    assert verify.schema_matches_output(client, outputs).passed
    assert verify.manifest_keys_unique(outputs).passed
    assert verify.manifest_pointers_resolve(client, outputs, sample_size=10).passed


def test_duplicated_manifest_key_fails_uniqueness(published, client):
    outputs = published()
    rewrite_manifest(client, outputs, pa.concat_tables([outputs.manifest, outputs.manifest.slice(0, 1)]))
    passed, metadata = verify.manifest_keys_unique(published())
    assert not passed and metadata["duplicate_keys"] == 1
    assert metadata["sample"][0]["video_id"] == outputs.manifest["video_id"][0].as_py()


def test_pointer_to_another_row_fails_pointer_check(published, client):
    outputs = published()
    shifted = [
        (i + 1) % n
        for i, n in zip(
            outputs.manifest["shard_idx"].to_pylist(), outputs.manifest["shard_n"].to_pylist(), strict=True
        )
    ]
    rewrite_manifest(client, outputs, with_column(outputs.manifest, "shard_idx", shifted))
    passed, metadata = verify.manifest_pointers_resolve(client, published(), sample_size=5)
    assert not passed and metadata["bad_pointers"] == 5
    assert "holds" in metadata["sample"][0]["problem"]


def test_pointer_to_a_missing_shard_fails(published, client):
    outputs = published()
    gone = pc.min(outputs.manifest["fused_key"]).as_py()
    client.delete_object(Bucket=outputs.bucket, Key=gone)
    passed, metadata = verify.manifest_pointers_resolve(client, published(), sample_size=100)
    assert not passed and {bad["problem"] for bad in metadata["sample"]} == {"shard missing"}


def test_manifest_dim_the_lock_never_allowed_fails_schema_check(published, client):
    outputs = published()
    rewrite_manifest(
        client, outputs, with_column(outputs.manifest, "fused_dim", [7] * outputs.manifest.num_rows)
    )
    passed, metadata = verify.schema_matches_output(client, published())
    assert not passed and "[7]" in metadata["problem"]


def test_rows_from_before_a_migration_keep_passing(published, client):
    """migrate-schema keeps old rows and shards; the old lock in the history still vouches for them."""
    outputs = published()
    old = outputs.lock
    migrated = replace(
        old,
        video_dim=old.video_dim * 2,
        fused_dim=old.fused_dim + old.video_dim,
        history=({"fused_dim": old.fused_dim},),
    )
    client.put_object(Bucket=outputs.bucket, Key=outputs.schema_key, Body=migrated.to_json())
    assert verify.schema_matches_output(client, published()).passed


def test_rows_without_a_lock_fail_schema_check(published, client):
    outputs = published()
    client.delete_object(Bucket=outputs.bucket, Key=outputs.schema_key)
    passed, metadata = verify.schema_matches_output(client, published())
    assert not passed and "no schema.json" in metadata["problem"]


def test_unparsable_lock_fails_schema_check(published, client):
    outputs = published()
    client.put_object(Bucket=outputs.bucket, Key=outputs.schema_key, Body=b"{not json")
    passed, metadata = verify.schema_matches_output(client, published())
    assert not passed and "not a valid schema lock" in metadata["problem"]


def test_fail_rate_counts_fail_and_fail_terminal_against_the_delta():
    counts = {"success_full": 90, "fail": 3, "fail_terminal": 2, "missing_text_pending": 5}
    assert verify.fail_rate(counts, 100, threshold=0.06).passed
    passed, metadata = verify.fail_rate(counts, 100, threshold=0.05)
    assert not passed and metadata == {"fail_rate": 0.05, "failed": 5, "delta": 100, "threshold": 0.05}
    assert verify.fail_rate({}, 0, threshold=0.05).passed
