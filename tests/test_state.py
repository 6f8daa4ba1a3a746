"""The fusion state DB on real SQLite files and its S3 mirror on the moto server."""

import sqlite3

import pytest

from clipfarm_fusion import state
from clipfarm_fusion.errors import ConcurrentWriteError, StoreError

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


KEY = "clipfarm/state/fusion_concat.sqlite"


def test_mirror_round_trip_and_restore_on_fresh_machine(tmp_path, client, bucket):
    first = tmp_path / "a" / "fusion_concat.sqlite"
    assert state.restore(client, bucket, KEY, first) == "new state DB"
    state.commit(client, bucket, KEY, first, [row("v1")])
    assert state.restore(client, bucket, KEY, first) == "local copy (mirror unchanged)"

    fresh = tmp_path / "b" / "fusion_concat.sqlite"
    assert state.restore(client, bucket, KEY, fresh) == "restored from mirror"
    assert state.read_rows(fresh).index.tolist() == ["v1"]


def test_stale_local_copy_is_replaced_by_newer_mirror(tmp_path, client, bucket):
    machine_a, machine_b = tmp_path / "a" / "f.sqlite", tmp_path / "b" / "f.sqlite"
    state.restore(client, bucket, KEY, machine_a)
    state.commit(client, bucket, KEY, machine_a, [row("v1")])
    state.restore(client, bucket, KEY, machine_b)
    state.commit(client, bucket, KEY, machine_b, [row("v2")])
    assert state.restore(client, bucket, KEY, machine_a) == "restored from mirror"
    assert sorted(state.read_rows(machine_a).index) == ["v1", "v2"]


def test_upload_over_a_mirror_someone_else_changed_is_refused_and_the_cache_is_kept(tmp_path, client, bucket):
    machine_a, machine_b = tmp_path / "a" / "f.sqlite", tmp_path / "b" / "f.sqlite"
    for path in (machine_a, machine_b):
        state.restore(client, bucket, KEY, path)
    state.commit(client, bucket, KEY, machine_a, [row("from-a")])
    with pytest.raises(ConcurrentWriteError, match="another run"):
        state.commit(client, bucket, KEY, machine_b, [row("from-b")])
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == machine_a.read_bytes()
    assert not machine_b.exists()  # the refused rows never reached the working copy either


def test_a_copy_whose_mirror_is_gone_is_set_aside_not_continued(tmp_path, client, bucket):
    path = tmp_path / "f.sqlite"
    state.restore(client, bucket, KEY, path)
    state.commit(client, bucket, KEY, path, [row("old")])
    client.delete_object(Bucket=bucket, Key=KEY)  # the mirror is deleted, or the bucket recreated
    source = state.restore(client, bucket, KEY, path)
    assert source.startswith("new state DB (mirror gone")
    assert not path.exists()
    kept = [p for p in tmp_path.iterdir() if ".set-aside-" in p.name and not p.name.endswith(".mirror.json")]
    assert len(kept) == 1 and state.read_rows(kept[0]).index.tolist() == ["old"]  # renamed, never deleted
    state.commit(client, bucket, KEY, path, [row("new")])  # no exit 4: nobody else's object is there
    assert state.read_rows(path).index.tolist() == ["new"]


def test_a_copy_of_another_bucket_is_never_used(tmp_path, client, bucket):
    other = f"{bucket}-other"
    client.create_bucket(Bucket=other)
    path = tmp_path / "f.sqlite"
    state.restore(client, other, KEY, path)
    state.commit(client, other, KEY, path, [row("from-other-bucket")])
    assert state.restore(
        client, bucket, KEY, path
    ) == "new state DB; a copy of another mirror was set aside as " + next(
        p.name for p in tmp_path.iterdir() if p.name.startswith("f.sqlite.set-aside-") and p.suffix != ".json"
    )
    assert state.read_rows(path).empty


def test_a_copy_never_uploaded_is_continued_when_there_is_no_mirror(tmp_path, client, bucket):
    path = tmp_path / "fusion_concat.sqlite"
    with sqlite3.connect(path) as connection:  # a seed-era working copy, never mirrored
        connection.execute(SEED_ERA_DDL)
        connection.execute("INSERT INTO processed_items VALUES ('old1','h','t','fail',NULL,NULL,NULL,2)")
    assert state.restore(client, bucket, KEY, path) == "local copy (no mirror yet)"
    assert state.read_rows(path).loc["old1", "retry_count"] == 2


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00garbage" * 100, "sqlite-other-table"],
    ids=["empty", "random-bytes", "another-table"],
)
def test_a_corrupt_mirror_stops_before_replacing_a_good_copy(tmp_path, client, bucket, body):
    path = tmp_path / "f.sqlite"
    state.restore(client, bucket, KEY, path)
    state.commit(client, bucket, KEY, path, [row("good")])
    good = path.read_bytes()
    if body == "sqlite-other-table":
        other = tmp_path / "other.sqlite"
        with sqlite3.connect(other) as connection:
            connection.execute("CREATE TABLE something_else (x TEXT)")
        body = other.read_bytes()
    client.put_object(Bucket=bucket, Key=KEY, Body=body)
    with pytest.raises(StoreError, match="not a usable fusion state DB"):
        state.restore(client, bucket, KEY, path)
    assert path.read_bytes() == good
