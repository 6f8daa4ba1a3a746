"""The text stage DB: read-only, old files without source_hash, unavailable cases."""

import sqlite3

from clipfarm_fusion import text_state
from clipfarm_fusion.synthetic import text_state_db


def test_reads_from_s3_without_touching_disk(client, bucket):
    body = text_state_db([("v1", "h1", "t", "no_captions", None)])
    client.put_object(Bucket=bucket, Key="s/text.sqlite", Body=body)
    rows, problem = text_state.load(client, f"s3://{bucket}/s/text.sqlite")
    assert problem is None
    assert rows.loc["v1", "status"] == "no_captions" and rows.loc["v1", "source_hash"] == "h1"


def test_local_file_is_opened_read_only(tmp_path, client):
    path = tmp_path / "text.sqlite"
    path.write_bytes(text_state_db([("v1", "h1", "t", "queued", None)]))
    before = path.read_bytes()
    path.chmod(0o444)
    rows, problem = text_state.load(client, str(path))
    assert problem is None and rows.loc["v1", "status"] == "queued"
    assert path.read_bytes() == before
    assert not (tmp_path / "text.sqlite-journal").exists()


def test_old_files_without_source_hash_work(tmp_path, client):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, processed_at TEXT, status TEXT)"
        )
        connection.execute("INSERT INTO processed_items VALUES ('v1', 't', 'no_captions')")
    rows, problem = text_state.load(client, str(path))
    assert problem is None
    assert rows.loc["v1", "source_hash"] is None


def test_missing_garbage_and_tableless_files_are_unavailable(tmp_path, client, bucket):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not sqlite" * 100)
    empty_db = tmp_path / "empty.sqlite"
    sqlite3.connect(empty_db).close()
    for location in (
        str(tmp_path / "nope.sqlite"),
        str(garbage),
        str(empty_db),
        f"s3://{bucket}/missing.sqlite",
    ):
        rows, problem = text_state.load(client, location)
        assert rows is None
        assert location in problem


def test_locked_file_is_unavailable(tmp_path, client):
    path = tmp_path / "locked.sqlite"
    path.write_bytes(text_state_db([("v1", "h1", "t", "queued", None)]))
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        rows, problem = text_state.load(client, str(path))
    finally:
        holder.rollback()
        holder.close()
    assert rows is None and "locked" in problem
