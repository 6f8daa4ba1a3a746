"""Shards, manifest upserts (a real Delta table) and the schema lock against the moto server."""

import logging
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from clipfarm_fusion.core import drift
from clipfarm_fusion.core.kernels import FusionOptions
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import SchemaDriftError
from clipfarm_fusion.stores import manifest, schema_lock, shards

DAY = date(2026, 3, 1)


@pytest.mark.s3_backends
def test_shard_parts_continue_after_existing_and_never_overwrite(client, bucket):
    layout = Layout("clipfarm")
    squatter = layout.shard_key("concat", DAY, 1)
    client.put_object(Bucket=bucket, Key=layout.shard_key("concat", DAY, 0), Body=b"earlier run")
    client.put_object(Bucket=bucket, Key=squatter, Body=b"earlier run")
    first_free = shards.first_free_part(client, bucket, layout, "concat", DAY)
    assert first_free == 2
    writer = shards.ShardWriter(client, bucket, layout, "concat", DAY, first_part=first_free - 1, run_id="r")
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
            "fused_at": [None] * n,  # the commit stamps it
            **{name: [None] * n for name in manifest.LINEAGE.names},
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


def test_manifest_commit_writes_every_row_and_the_newest_commit_wins(client, bucket):
    """I1: a commit upserts one row per (video_id, source_hash), and the row kept is the newest commit's,
    whatever its captured_at or part number (a run behind the newest never plans an older capture over
    a newer one, and a concurrent one yields; test_history)."""
    table = open_manifest(client, bucket)
    assert table.source == "new manifest table" and published(client, bucket) is None
    old = manifest_rows(["a", "b", "c"], ["h1", "h1", "h1"], "k/part-9999.npz", captured="2026-03-02")
    assert table.commit(old) == (3, 0)  # the first commit creates the table
    new = manifest_rows(["b", "c", "d"], ["h1", "h2", "h1"], "k/part-10000.npz", captured="2026-03-01")
    assert open_manifest(client, bucket).commit(new) == (2, 1)
    merged = published(client, bucket)
    assert merged.schema == manifest.SCHEMA
    assert {k: r["fused_key"] for k, r in by_key(merged).items()} == {
        ("a", "h1"): "k/part-9999.npz",
        ("b", "h1"): "k/part-10000.npz",
        ("c", "h1"): "k/part-9999.npz",
        ("c", "h2"): "k/part-10000.npz",
        ("d", "h1"): "k/part-10000.npz",
    }
    stamps = {k: r["fused_at"] for k, r in by_key(merged).items()}
    assert stamps[("b", "h1")] > stamps[("a", "h1")] == stamps[("c", "h1")]
    assert open_manifest(client, bucket).commit(old) == (0, 3)  # committed again: newest again
    assert by_key(published(client, bucket))[("b", "h1")]["fused_key"] == "k/part-9999.npz"


def test_a_commit_is_stamped_after_the_rows_it_replaces_whatever_the_clock():
    """A machine whose clock is behind still stamps its commit after the fused_at it replaces."""
    from datetime import UTC, datetime

    published = pa.table({"video_id": ["a"], "source_hash": ["h"], "fused_at": ["2026-03-05T00:00:00+00:00"]})
    behind = manifest.fused_at(published, now=datetime(2026, 3, 1, tzinfo=UTC))
    assert behind == "2026-03-05T00:00:00.000001+00:00"
    ahead = manifest.fused_at(published, now=datetime(2026, 3, 6, tzinfo=UTC))
    assert ahead == "2026-03-06T00:00:00.000000+00:00"
    assert manifest.fused_at(published.slice(0, 0), now=datetime(2026, 3, 1, tzinfo=UTC)).startswith(
        "2026-03-01T00:00:00"
    )


def test_manifest_commit_merges_on_the_fresh_table_after_a_lost_race(client, bucket, caplog):
    open_manifest(client, bucket).commit(manifest_rows(["a", "x"], ["h", "h"], "k0", captured="2026-03-01"))
    first, second = open_manifest(client, bucket), open_manifest(client, bucket)
    assert first.commit(manifest_rows(["b", "x"], ["h", "h"], "k1", captured="2026-03-03")) == (1, 1)
    # the second writer read the table before the first one's commit: it merges again on the fresh
    # table, keeps the first writer's rows, and its own x, the newest commit, wins
    with caplog.at_level(logging.WARNING, logger="clipfarm_fusion.stores.manifest"):
        assert second.commit(manifest_rows(["c", "x"], ["h", "h"], "k2", captured="2026-03-02")) == (1, 1)
    assert "merging again" in caplog.text  # it did lose the race, and merged on the fresh table
    rows = by_key(published(client, bucket))
    assert sorted(rows) == [("a", "h"), ("b", "h"), ("c", "h"), ("x", "h")]
    assert (rows[("x", "h")]["fused_key"], rows[("b", "h")]["fused_key"]) == ("k2", "k1")


@pytest.mark.s3_backends
def test_manifest_commits_of_two_writers_racing_to_create_the_table_both_land(client, bucket):
    first, second = open_manifest(client, bucket), open_manifest(client, bucket)
    assert first.table is None and second.table is None
    assert first.commit(manifest_rows(["a", "x"], ["h", "h"], "k1", captured="2026-03-02")) == (2, 0)
    assert second.commit(manifest_rows(["b", "x"], ["h", "h"], "k2", captured="2026-03-01")) == (1, 1)
    rows = by_key(published(client, bucket))
    assert sorted(rows) == [("a", "h"), ("b", "h"), ("x", "h")]
    assert rows[("x", "h")]["fused_key"] == "k2"


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
