"""The fusion state DB on real SQLite files and its S3 mirror on the moto server."""

import sqlite3

import pytest

from clipfarm_fusion import state
from clipfarm_fusion.errors import ConcurrentWriteError

SEED_ERA_DDL = """
CREATE TABLE processed_items (
    video_id TEXT PRIMARY KEY, source_hash TEXT, processed_at TEXT, status TEXT,
    error TEXT, artifact_key TEXT, vector_id TEXT, retry_count INTEGER DEFAULT 0
)"""


def row(video_id, status="fail", retry=1, **extra):
    base = dict(
        video_id=video_id,
        source_hash="h",
        processed_at="t",
        status=status,
        error=None,
        artifact_key=None,
        vector_id=None,
        retry_count=retry,
    )
    return base | extra


def test_opens_and_continues_a_seed_era_file(tmp_path):
    path = tmp_path / "fusion_concat.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute(SEED_ERA_DDL)
        connection.execute(
            "INSERT INTO processed_items VALUES ('old1','h','2025-01-01','fail',NULL,NULL,NULL,2)"
        )
    db = state.StateDB(path)
    assert db.read_all().loc["old1", "retry_count"] == 2
    db.upsert([row("old1", retry=3), row("new1", status="success_full", retry=0)])
    db.close()
    with sqlite3.connect(path) as connection:
        rows = dict(connection.execute("SELECT video_id, retry_count FROM processed_items"))
    assert rows == {"old1": 3, "new1": 0}


def test_adds_columns_missing_from_older_files(tmp_path):
    path = tmp_path / "fusion_concat.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, status TEXT)")
        connection.execute("INSERT INTO processed_items VALUES ('a', 'fail')")
    frame = state.StateDB(path).read_all()
    assert frame.loc["a", "retry_count"] == 0
    assert "artifact_key" in frame.columns


def test_upsert_is_batched_in_transactions(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "WRITE_BATCH", 100)
    db = state.StateDB(tmp_path / "s.sqlite")
    commits = []
    import sqlalchemy as sa

    sa.event.listen(db.engine, "commit", lambda conn: commits.append(1))
    db.upsert([row(f"v{i}") for i in range(250)])
    assert len(commits) == 3
    assert len(db.read_all()) == 250


def test_mirror_round_trip_and_restore_on_fresh_machine(tmp_path, client, bucket):
    key = "clipfarm/state/fusion_concat.sqlite"
    first = tmp_path / "a" / "fusion_concat.sqlite"
    assert state.restore(client, bucket, key, first) == "new state DB"
    db = state.StateDB(first)
    db.upsert([row("v1")])
    db.close()
    state.upload(client, bucket, key, first)
    assert state.restore(client, bucket, key, first) == "local copy (mirror unchanged)"

    fresh = tmp_path / "b" / "fusion_concat.sqlite"
    assert state.restore(client, bucket, key, fresh) == "restored from mirror"
    assert state.StateDB(fresh).read_all().index.tolist() == ["v1"]


def test_stale_local_copy_is_replaced_by_newer_mirror(tmp_path, client, bucket):
    key = "clipfarm/state/fusion_concat.sqlite"
    machine_a, machine_b = tmp_path / "a" / "f.sqlite", tmp_path / "b" / "f.sqlite"
    state.restore(client, bucket, key, machine_a)
    db = state.StateDB(machine_a)
    db.upsert([row("v1")])
    db.close()
    state.upload(client, bucket, key, machine_a)
    state.restore(client, bucket, key, machine_b)
    db = state.StateDB(machine_b)
    db.upsert([row("v2")])
    db.close()
    state.upload(client, bucket, key, machine_b)
    assert state.restore(client, bucket, key, machine_a) == "restored from mirror"
    assert sorted(state.StateDB(machine_a).read_all().index) == ["v1", "v2"]


def test_upload_over_a_mirror_someone_else_changed_is_refused(tmp_path, client, bucket):
    key = "clipfarm/state/fusion_concat.sqlite"
    machine_a, machine_b = tmp_path / "a" / "f.sqlite", tmp_path / "b" / "f.sqlite"
    for path, video_id in ((machine_a, "from-a"), (machine_b, "from-b")):
        state.restore(client, bucket, key, path)
        db = state.StateDB(path)
        db.upsert([row(video_id)])
        db.close()
    state.upload(client, bucket, key, machine_a)
    with pytest.raises(ConcurrentWriteError, match="another run"):
        state.upload(client, bucket, key, machine_b)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == machine_a.read_bytes()
