"""Shards, manifest upsert and the schema lock against the moto server."""

from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from clipfarm_fusion import manifest, schema_lock, shards
from clipfarm_fusion.errors import ConcurrentWriteError, SchemaDriftError
from clipfarm_fusion.fuse import FusionOptions
from clipfarm_fusion.layout import Layout

DAY = date(2026, 3, 1)


def test_shard_parts_continue_after_existing_and_never_overwrite(client, bucket):
    layout = Layout("clipfarm")
    squatter = layout.shard_key("concat", DAY, 1)
    client.put_object(Bucket=bucket, Key=layout.shard_key("concat", DAY, 0), Body=b"earlier run")
    client.put_object(Bucket=bucket, Key=squatter, Body=b"earlier run")
    writer = shards.ShardWriter(client, bucket, layout, "concat", DAY)
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    first = writer.write(["a", "b"], vectors, ["t1", "t2"])
    assert first == layout.shard_key("concat", DAY, 2)
    assert client.get_object(Bucket=bucket, Key=squatter)["Body"].read() == b"earlier run"
    client.put_object(Bucket=bucket, Key=layout.shard_key("concat", DAY, 3), Body=b"concurrent writer")
    second = writer.write(["c"], vectors[:1], ["t3"])
    assert second == layout.shard_key("concat", DAY, 4)
    loaded = shards.decode(client.get_object(Bucket=bucket, Key=first)["Body"].read())
    assert loaded["video_ids"].tolist() == ["a", "b"]
    np.testing.assert_array_equal(loaded["vectors"], vectors)
    assert loaded["captured_at"].tolist() == ["t1", "t2"]


def manifest_rows(ids, hashes, key, captured="2026-03-01"):
    n = len(ids)
    return pa.table(
        {
            "video_id": ids,
            "captured_at": [captured] * n,
            "source_hash": hashes,
            "fusion_strategy": ["concat"] * n,
            "fused_dim": [5] * n,
            "fused_key": [key] * n,
            "shard_idx": list(range(n)),
            "shard_n": [n] * n,
            "video_emb_key": ["v"] * n,
            "audio_emb_key": ["a"] * n,
            "text_emb_key": ["t"] * n,
            "text_present": [1] * n,
            "text_source": ["full"] * n,
            "text_state_status": [None] * n,
            "text_missing_reason": [None] * n,
            "fusion_status": ["success_full"] * n,
            "retry_count_at_write": [0] * n,
        },
        schema=manifest.SCHEMA,
    )


def test_manifest_upsert_keeps_latest_row_per_key():
    old = manifest_rows(["a", "b", "c"], ["h1", "h1", "h1"], "k/part-0000.npz")
    new = manifest_rows(["b", "c", "d"], ["h1", "h2", "h1"], "k/part-0001.npz", captured="2026-03-02")
    merged, added, updated = manifest.merge(old, new)
    assert (added, updated) == (2, 1)
    rows = {(r["video_id"], r["source_hash"]): r["fused_key"] for r in merged.to_pylist()}
    assert rows == {
        ("a", "h1"): "k/part-0000.npz",
        ("b", "h1"): "k/part-0001.npz",
        ("c", "h1"): "k/part-0000.npz",
        ("c", "h2"): "k/part-0001.npz",
        ("d", "h1"): "k/part-0001.npz",
    }
    again, added, updated = manifest.merge(merged, new)
    assert (added, updated) == (0, 0)
    assert again.sort_by("video_id").equals(merged.sort_by("video_id"))


def one_row(captured, key, video_id="a", source_hash="h1", status="success_full"):
    row = manifest_rows([video_id], [source_hash], key, captured=captured)
    return row.set_column(row.schema.get_field_index("fusion_status"), "fusion_status", pa.array([status]))


@pytest.mark.parametrize(
    ("old_captured", "new_captured", "winner"),
    [
        ("2026-03-01T09:00:00Z", "2026-03-01T10:00:00+02:00", "old"),  # new is 08:00Z: older
        ("2026-03-01T10:00:00+02:00", "2026-03-01T09:00:00Z", "new"),  # old is 08:00Z: older
        ("2026-03-01T09:00:00-02:00", "2026-03-01T10:00:00Z", "old"),  # old is 11:00Z
        ("", "2026-03-01", "new"),  # no date is the oldest
        ("2026-03-01", "not a date", "old"),
    ],
)
def test_manifest_merge_compares_captured_at_as_instants_not_strings(old_captured, new_captured, winner):
    old = one_row(old_captured, "k/date=2026-03-01/part-0000.npz")
    new = one_row(new_captured, "k/date=2026-03-01/part-0001.npz")
    merged, added, updated = manifest.merge(old, new)
    assert (added, updated) == (0, int(winner == "new"))
    assert merged.num_rows == 1
    assert merged["captured_at"][0].as_py() == (new_captured if winner == "new" else old_captured)


def test_manifest_merge_tie_at_the_same_instant_goes_to_the_larger_fused_key_else_the_existing_row():
    earlier_key, later_key = "k/date=2026-03-01/part-0001.npz", "k/date=2026-03-01/part-0002.npz"
    old = one_row("2026-03-01T08:00:00Z", later_key)
    new = one_row("2026-03-01T10:00:00+02:00", earlier_key)  # the same instant
    merged, added, updated = manifest.merge(old, new)
    assert (added, updated, merged["fused_key"][0].as_py()) == (0, 0, later_key)
    merged, added, updated = manifest.merge(new, old)
    assert (added, updated, merged["fused_key"][0].as_py()) == (0, 1, later_key)
    same = one_row("2026-03-01T08:00:00+00:00", later_key, status="success_text_placeholder")
    merged, added, updated = manifest.merge(old, same)  # a full tie: the existing row stays
    assert (added, updated, merged["fusion_status"][0].as_py()) == (0, 0, "success_full")


def test_manifest_commit_merges_on_the_fresh_manifest_after_a_lost_race(client, bucket):
    key = "clipfarm/fused/concat/fused_manifest.parquet"
    manifest.commit(client, bucket, key, manifest_rows(["a"], ["h"], "k0"))
    _, etag = manifest.read(client, bucket, key)
    manifest.commit(client, bucket, key, manifest_rows(["b"], ["h"], "k1"))
    from clipfarm_fusion import s3io

    with pytest.raises(ConcurrentWriteError):
        s3io.put_replacing(client, bucket, key, b"stale", etag)
    manifest.commit(client, bucket, key, manifest_rows(["c"], ["h"], "k2"))
    table, _ = manifest.read(client, bucket, key)
    assert sorted(table["video_id"].to_pylist()) == ["a", "b", "c"]


def test_schema_lock_is_written_once(client, bucket):
    key = "clipfarm/fused/concat/schema.json"
    lock = schema_lock.SchemaLock.build("concat", (768, 768, 768), FusionOptions())
    assert lock.fused_dim == 2305
    assert schema_lock.write_if_absent(client, bucket, key, lock) == lock
    other = schema_lock.SchemaLock.build("concat", (512, 768, 768), FusionOptions())
    with pytest.raises(SchemaDriftError, match="created concurrently"):
        schema_lock.write_if_absent(client, bucket, key, other)
    assert schema_lock.read(client, bucket, key).dims == (768, 768, 768)


def test_drift_is_raised_only_when_most_disagree():
    lock = schema_lock.SchemaLock.build("concat", (4, 4, 4), FusionOptions())
    one_odd = {
        "video_dim": np.array([4, 4, 8]),
        "audio_dim": np.array([4, 4, 4]),
        "text_dim": np.array([4, 0, 4]),
    }
    schema_lock.check_drift(lock, one_odd, "schema.json")
    most_odd = {
        "video_dim": np.array([8, 8, 4]),
        "audio_dim": np.array([4, 4, 4]),
        "text_dim": np.array([4, 4, 4]),
    }
    with pytest.raises(SchemaDriftError, match="2 of 3 video embeddings are 8-d.*migrate-schema"):
        schema_lock.check_drift(lock, most_odd, "schema.json")
