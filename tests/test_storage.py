"""Shards, manifest upserts (a real Delta table) and the schema lock against the moto server."""

import logging
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from clipfarm_fusion import drift, manifest, schema_lock, shards
from clipfarm_fusion.errors import SchemaDriftError
from clipfarm_fusion.fuse import FusionOptions
from clipfarm_fusion.layout import Layout

DAY = date(2026, 3, 1)


def test_shard_parts_continue_after_existing_and_never_overwrite(client, bucket):
    layout = Layout("clipfarm")
    squatter = layout.shard_key("concat", DAY, 1)
    client.put_object(Bucket=bucket, Key=layout.shard_key("concat", DAY, 0), Body=b"earlier run")
    client.put_object(Bucket=bucket, Key=squatter, Body=b"earlier run")
    first_free = shards.first_free_part(client, bucket, layout, "concat", DAY)
    assert first_free == 2
    writer = shards.ShardWriter(client, bucket, layout, "concat", DAY, first_part=first_free - 1)
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


ROOT = "clipfarm"


def open_manifest(client, bucket, root=ROOT, strategy="concat"):
    return manifest.open_table(client, bucket, Layout(root), strategy, 30)


def published(client, bucket, root=ROOT, strategy="concat"):
    return manifest.read(client, bucket, Layout(root), strategy)


def by_key(table):
    return {(r["video_id"], r["source_hash"]): r for r in table.to_pylist()}


def test_manifest_commit_keeps_latest_row_per_key(client, bucket):
    table = open_manifest(client, bucket)
    assert table.source == "new manifest table" and published(client, bucket) is None
    old = manifest_rows(["a", "b", "c"], ["h1", "h1", "h1"], "k/part-0000.npz")
    assert table.commit(old) == (3, 0)  # the first commit creates the table
    new = manifest_rows(["b", "c", "d"], ["h1", "h2", "h1"], "k/part-0001.npz", captured="2026-03-02")
    assert open_manifest(client, bucket).commit(new) == (2, 1)
    merged = published(client, bucket)
    assert merged.schema == manifest.SCHEMA  # the stored instant column stays internal
    assert {k: r["fused_key"] for k, r in by_key(merged).items()} == {
        ("a", "h1"): "k/part-0000.npz",
        ("b", "h1"): "k/part-0001.npz",
        ("c", "h1"): "k/part-0000.npz",
        ("c", "h2"): "k/part-0001.npz",
        ("d", "h1"): "k/part-0001.npz",
    }
    assert by_key(merged)[("b", "h1")]["captured_at"] == "2026-03-02"
    assert open_manifest(client, bucket).commit(new) == (0, 0)  # re-merging the same rows
    assert open_manifest(client, bucket).commit(old) == (0, 0)  # and older ones
    assert (
        published(client, bucket)
        .sort_by([("video_id", "ascending"), ("source_hash", "ascending")])
        .equals(merged.sort_by([("video_id", "ascending"), ("source_hash", "ascending")]))
    )


def one_row(captured, key, video_id="a", source_hash="h1", status="success_full"):
    row = manifest_rows([video_id], [source_hash], key, captured=captured)
    return row.set_column(row.schema.get_field_index("fusion_status"), "fusion_status", pa.array([status]))


def merged_pair(client, bucket, existing, new, root=ROOT):
    """Commit `existing` (creating the table), then upsert `new` into it: (added, updated, the one row)."""
    assert open_manifest(client, bucket, root).commit(existing) == (1, 0)
    added, updated = open_manifest(client, bucket, root).commit(new)
    rows = published(client, bucket, root).to_pylist()
    assert len(rows) == 1
    return added, updated, rows[0]


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
def test_manifest_merge_compares_captured_at_as_instants_not_strings(
    client, bucket, old_captured, new_captured, winner
):
    old = one_row(old_captured, "k/date=2026-03-01/part-0000.npz")
    new = one_row(new_captured, "k/date=2026-03-01/part-0001.npz")
    added, updated, row = merged_pair(client, bucket, old, new)
    assert (added, updated) == (0, int(winner == "new"))
    assert row["captured_at"] == (new_captured if winner == "new" else old_captured)


def test_manifest_merge_tie_at_the_same_instant_goes_to_the_larger_fused_key_else_the_existing_row(
    client, bucket
):
    earlier_key, later_key = "k/date=2026-03-01/part-0001.npz", "k/date=2026-03-01/part-0002.npz"
    old = one_row("2026-03-01T08:00:00Z", later_key)
    new = one_row("2026-03-01T10:00:00+02:00", earlier_key)  # the same instant
    assert merged_pair(client, bucket, old, new, root="r1")[:2] == (0, 0)
    assert published(client, bucket, "r1")["fused_key"].to_pylist() == [later_key]
    added, updated, row = merged_pair(client, bucket, new, old, root="r2")
    assert (added, updated, row["fused_key"]) == (0, 1, later_key)
    same = one_row("2026-03-01T08:00:00+00:00", later_key, status="success_text_placeholder")
    added, updated, row = merged_pair(
        client, bucket, old, same, root="r3"
    )  # a full tie: the existing row stays
    assert (added, updated, row["fusion_status"]) == (0, 0, "success_full")
    no_key = one_row("2026-03-01T08:00:00Z", None)
    added, updated, row = merged_pair(client, bucket, no_key, new, root="r4")  # a null fused_key loses
    assert (added, updated, row["fused_key"]) == (0, 1, earlier_key)
    added, updated, row = merged_pair(client, bucket, new, no_key, root="r5")
    assert (added, updated, row["fused_key"]) == (0, 0, earlier_key)


def test_manifest_commit_merges_on_the_fresh_table_after_a_lost_race(client, bucket, caplog):
    open_manifest(client, bucket).commit(manifest_rows(["a", "x"], ["h", "h"], "k0", captured="2026-03-01"))
    first, second = open_manifest(client, bucket), open_manifest(client, bucket)
    assert first.commit(manifest_rows(["b", "x"], ["h", "h"], "k1", captured="2026-03-03")) == (1, 1)
    # the second writer read the table before the first one's commit: its x is newer than what it
    # read but older than what the first writer committed, so it must not replace it
    with caplog.at_level(logging.WARNING, logger="clipfarm_fusion.manifest"):
        assert second.commit(manifest_rows(["c", "x"], ["h", "h"], "k2", captured="2026-03-02")) == (1, 0)
    assert "merging again" in caplog.text  # it did lose the race, and merged on the fresh table
    rows = by_key(published(client, bucket))
    assert sorted(rows) == [("a", "h"), ("b", "h"), ("c", "h"), ("x", "h")]
    assert (rows[("x", "h")]["fused_key"], rows[("x", "h")]["captured_at"]) == ("k1", "2026-03-03")


def test_manifest_commits_of_two_writers_racing_to_create_the_table_both_land(client, bucket):
    first, second = open_manifest(client, bucket), open_manifest(client, bucket)
    assert first.table is None and second.table is None
    assert first.commit(manifest_rows(["a", "x"], ["h", "h"], "k1", captured="2026-03-02")) == (2, 0)
    assert second.commit(manifest_rows(["b", "x"], ["h", "h"], "k2", captured="2026-03-01")) == (1, 0)
    rows = by_key(published(client, bucket))
    assert sorted(rows) == [("a", "h"), ("b", "h"), ("x", "h")]
    assert rows[("x", "h")]["fused_key"] == "k1"


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
    one_odd = drift.count(
        {
            "video_dim": np.array([4, 4, 8]),
            "audio_dim": np.array([4, 4, 4]),
            "text_dim": np.array([4, 0, 4]),
        }
    )
    assert one_odd == {"video_dim": {4: 2, 8: 1}, "audio_dim": {4: 3}, "text_dim": {4: 2}}
    drift.check((4, 4, 4), one_odd, "schema.json", "concat")
    most_odd = {"video_dim": {8: 1, 4: 1}, "audio_dim": {4: 3}, "text_dim": {}}
    chunks = [most_odd, {"video_dim": {8: 1}, "audio_dim": {}, "text_dim": {4: 1}}]  # summed over chunks
    with pytest.raises(
        SchemaDriftError, match="2 of 3 video embeddings are 8-d.*migrate-schema --strategy concat"
    ):
        drift.check((4, 4, 4), drift.merge(chunks), "schema.json", "concat")
    drift.check((4, 4, 4), most_odd, "schema.json", "concat")  # one of two is not most


def test_majority_is_the_most_common_dim_ties_to_the_smaller():
    assert drift.majority({}) is None
    assert drift.majority({8: 2, 4: 2, 16: 1}) == 4
    assert drift.majority({8: 3, 4: 2}) == 8


def test_an_upsert_never_drops_a_row_its_predicate_also_matches(client, bucket):
    """The commit replaces `video_id IN (...) AND source_hash IN (...)`: a published row of a written video
    with another written row's hash is matched too, and must survive unchanged."""
    open_manifest(client, bucket).commit(manifest_rows(["a", "a"], ["h1", "h2"], "k0", captured="2026-03-01"))
    added_updated = open_manifest(client, bucket).commit(
        pa.concat_tables(
            [
                manifest_rows(["a"], ["h1"], "k1", captured="2026-03-02"),
                manifest_rows(["b"], ["h2"], "k1", captured="2026-03-02"),
            ]
        )
    )
    assert added_updated == (1, 1)
    rows = by_key(published(client, bucket))
    assert sorted(rows) == [("a", "h1"), ("a", "h2"), ("b", "h2")]
    assert rows[("a", "h2")]["fused_key"] == "k0" and rows[("a", "h1")]["fused_key"] == "k1"
