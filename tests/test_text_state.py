"""The text stage DB: read-only, by id, through one revalidated on-disk copy of an S3 snapshot; old files
without source_hash or processed_at; every unavailable case answers instead of raising."""

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from clipfarm_fusion.devtools.synthetic import text_state_db
from clipfarm_fusion.stores import snapshot_cache, text_state


def _cache_files(cache_dir):
    folder = cache_dir / snapshot_cache.CACHE_SUBDIR
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def _the_cache(cache_dir):
    [database] = (cache_dir / snapshot_cache.CACHE_SUBDIR).glob("*.sqlite")
    return database, database.with_suffix(".json")


def _get_requests(client):
    """Every GetObject this client sends: [If-None-Match header or None, HTTP status]."""
    calls: list[list] = []

    def sent(request, **_):
        header = request.headers.get("If-None-Match")
        calls.append([header.decode() if isinstance(header, bytes) else header, None])

    def answered(http_response, **_):
        calls[-1][1] = http_response.status_code

    client.meta.events.register("before-send.s3.GetObject", sent)
    client.meta.events.register("after-call.s3.GetObject", answered)
    return calls


def _local_db(path, create_sql, rows):
    with sqlite3.connect(path) as connection:
        connection.execute(create_sql)
        marks = ", ".join("?" * len(rows[0]))
        connection.executemany(f"INSERT INTO processed_items VALUES ({marks})", rows)
    connection.close()
    return str(path)


def test_s3_state_is_cached_on_disk_and_read_by_id(client, bucket, tmp_path):
    body = text_state_db([("v1", "h1", "2026-03-01T10:00:00Z", "no_captions", None)])
    etag = client.put_object(Bucket=bucket, Key="s/text.sqlite", Body=body)["ETag"]
    uri = f"s3://{bucket}/s/text.sqlite"
    with text_state.open_text_state(client, uri, tmp_path) as state:
        assert state.problem is None
        status, source_hash = state.lookup(["v1", "unknown"])
    assert list(status) == ["no_captions", None] and list(source_hash) == ["h1", None]
    assert status.dtype == object and source_hash.dtype == object
    database, sidecar = _the_cache(tmp_path)
    assert database.read_bytes() == body
    assert json.loads(sidecar.read_text()) == {"uri": uri, "etag": etag, "size": len(body)}


def test_unchanged_s3_object_is_revalidated_with_a_304(client, bucket, tmp_path):
    body = text_state_db([("v1", "h1", "2026-03-01T10:00:00Z", "queued", None)])
    etag = client.put_object(Bucket=bucket, Key="text.sqlite", Body=body)["ETag"]
    uri = f"s3://{bucket}/text.sqlite"
    text_state.open_text_state(client, uri, tmp_path).close()
    database, _ = _the_cache(tmp_path)
    before = database.stat()

    requests = _get_requests(client)
    with text_state.open_text_state(client, uri, tmp_path) as state:
        assert state.problem is None
        assert list(state.lookup(["v1"])[0]) == ["queued"]
    assert requests == [[etag, 304]]  # one conditional GET, no body
    after = database.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_s3_object_replaces_the_cache(client, bucket, tmp_path):
    uri = f"s3://{bucket}/text.sqlite"
    old = text_state_db([("v1", "h1", "2026-03-01T10:00:00Z", "queued", None)])
    client.put_object(Bucket=bucket, Key="text.sqlite", Body=old)
    first = text_state.open_text_state(client, uri, tmp_path)
    new = text_state_db([("v1", "h2", "2026-03-02T10:00:00Z", "no_captions", None)])
    new_etag = client.put_object(Bucket=bucket, Key="text.sqlite", Body=new)["ETag"]

    requests = _get_requests(client)
    with text_state.open_text_state(client, uri, tmp_path) as second:
        assert list(second.lookup(["v1"])[1]) == ["h2"]
        assert second.cursor == "2026-03-02T10:00:00Z"
    assert [status for _, status in requests] == [200]
    database, sidecar = _the_cache(tmp_path)
    assert database.read_bytes() == new and json.loads(sidecar.read_text())["etag"] == new_etag
    assert _cache_files(tmp_path) == sorted([database.name, sidecar.name])  # one copy, no temp files
    # Replaced, not rewritten in place: a state opened before still reads the version it opened.
    assert list(first.lookup(["v1"])[1]) == ["h1"]
    first.close()


def test_deleted_s3_object_is_unavailable_even_with_a_cache(client, bucket, tmp_path):
    uri = f"s3://{bucket}/text.sqlite"
    body = text_state_db([("v1", "h1", "2026-03-01T10:00:00Z", "queued", None)])
    client.put_object(Bucket=bucket, Key="text.sqlite", Body=body)
    text_state.open_text_state(client, uri, tmp_path).close()
    client.delete_object(Bucket=bucket, Key="text.sqlite")

    state = text_state.open_text_state(client, uri, tmp_path)
    assert state.problem == f"text state {uri} not found"
    assert list(state.lookup(["v1"])[0]) == [None]
    assert state.changed_since(None) is None and state.cursor is None
    assert _cache_files(tmp_path) == []  # the stale copy is gone, not kept for a later run


def test_non_sqlite_s3_body_is_unavailable_and_leaves_the_cache(client, bucket, tmp_path):
    uri = f"s3://{bucket}/text.sqlite"
    body = text_state_db([("v1", "h1", "2026-03-01T10:00:00Z", "queued", None)])
    client.put_object(Bucket=bucket, Key="text.sqlite", Body=body)
    text_state.open_text_state(client, uri, tmp_path).close()
    database, sidecar = _the_cache(tmp_path)
    kept = (database.read_bytes(), sidecar.read_text())

    client.put_object(Bucket=bucket, Key="text.sqlite", Body=b"<html>oops</html>")
    state = text_state.open_text_state(client, uri, tmp_path)
    assert state.problem == f"text state {uri} unavailable: not a SQLite file (17 bytes)"
    assert list(state.lookup(["v1"])[0]) == [None]
    assert (database.read_bytes(), sidecar.read_text()) == kept
    assert _cache_files(tmp_path) == sorted([database.name, sidecar.name])


def test_damaged_cache_is_downloaded_again(client, bucket, tmp_path):
    uri = f"s3://{bucket}/text.sqlite"
    body = text_state_db([("v1", "h1", "2026-03-01T10:00:00Z", "queued", None)])
    client.put_object(Bucket=bucket, Key="text.sqlite", Body=body)
    text_state.open_text_state(client, uri, tmp_path).close()
    database, _ = _the_cache(tmp_path)
    database.write_bytes(body[:100])  # truncated behind our back

    requests = _get_requests(client)
    with text_state.open_text_state(client, uri, tmp_path) as state:
        assert list(state.lookup(["v1"])[0]) == ["queued"]
    assert requests == [[None, 200]]  # unconditional: the sidecar's ETag no longer describes the copy
    assert database.read_bytes() == body


def test_local_file_is_opened_read_only(tmp_path, client):
    path = tmp_path / "text.sqlite"
    path.write_bytes(text_state_db([("v1", "h1", "t", "queued", None)]))
    before = path.read_bytes()
    path.chmod(0o444)
    cache_dir = tmp_path / "cache"
    with text_state.open_text_state(client, str(path), cache_dir) as state:
        assert state.problem is None and list(state.lookup(["v1"])[0]) == ["queued"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.sqlite"]  # no journal, no copy


def test_old_files_without_source_hash_work(tmp_path, client):
    location = _local_db(
        tmp_path / "old.sqlite",
        "CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, processed_at TEXT, status TEXT)",
        [("v1", "2026-03-01T10:00:00Z", "no_captions")],
    )
    with text_state.open_text_state(client, location, tmp_path) as state:
        assert state.problem is None
        status, source_hash = state.lookup(["v1"])
        assert list(status) == ["no_captions"] and list(source_hash) == [None]
        assert state.changed_since(None) == ["v1"]


def test_file_without_processed_at_gives_no_change_signal(tmp_path, client):
    location = _local_db(
        tmp_path / "older.sqlite",
        "CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, status TEXT)",
        [("v1", "queued")],
    )
    with text_state.open_text_state(client, location, tmp_path) as state:
        assert state.problem is None
        assert list(state.lookup(["v1"])[0]) == ["queued"]
        assert state.changed_since(None) is None and state.changed_since("2026-01-01") is None
        assert state.cursor is None


def test_missing_garbage_and_tableless_files_are_unavailable(tmp_path, client, bucket):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not sqlite" * 100)
    empty_db = tmp_path / "empty.sqlite"
    sqlite3.connect(empty_db).close()
    no_status = _local_db(
        tmp_path / "no_status.sqlite",
        "CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, source_hash TEXT)",
        [("v1", "h1")],
    )
    cases = {
        str(tmp_path / "nope.sqlite"): "unable to open database file",
        str(garbage): "file is not a database",
        str(empty_db): "no processed_items table",
        no_status: "processed_items has no status column",
        f"s3://{bucket}/missing.sqlite": "not found",
    }
    for location, why in cases.items():
        state = text_state.open_text_state(client, location, tmp_path / "cache")
        assert location in state.problem and why in state.problem
        status, source_hash = state.lookup(["v1", "v2"])
        assert list(status) == [None, None] and list(source_hash) == [None, None]
        assert state.changed_since(None) is None and state.cursor is None
        state.close()
    assert not (tmp_path / "nope.sqlite").exists()


def test_locked_file_is_unavailable(tmp_path, client):
    path = tmp_path / "locked.sqlite"
    path.write_bytes(text_state_db([("v1", "h1", "t", "queued", None)]))
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        state = text_state.open_text_state(client, str(path), tmp_path)
    finally:
        holder.rollback()
        holder.close()
    assert "locked" in state.problem and list(state.lookup(["v1"])[0]) == [None]


def test_a_lock_after_opening_makes_the_state_unavailable_not_an_error(tmp_path, client):
    path = tmp_path / "text.sqlite"
    path.write_bytes(text_state_db([("v1", "h1", "2026-03-01T10:00:00Z", "queued", None)]))
    state = text_state.open_text_state(client, str(path), tmp_path)
    assert state.problem is None
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        status, _ = state.lookup(["v1"])
    finally:
        holder.rollback()
        holder.close()
    assert "locked" in state.problem and list(status) == [None]
    assert list(state.lookup(["v1"])[0]) == [None] and state.changed_since(None) is None
    state.close()


def test_lookup_asks_by_id_in_chunks_of_at_most_900(client, bucket, tmp_path):
    rows = [
        (f"v{i:05d}", f"h{i}", "2026-03-01T10:00:00Z", "queued" if i % 2 else "done", None)
        for i in range(2000)
    ]
    client.put_object(Bucket=bucket, Key="text.sqlite", Body=text_state_db(rows))
    ids = [f"v{i:05d}" for i in reversed(range(2000))] + [f"x{i}" for i in range(500)] + ["v00007", "v00008"]
    with text_state.open_text_state(client, f"s3://{bucket}/text.sqlite", tmp_path) as state:
        # A statement with more than 900 bound values now fails (and would show as `problem`).
        state._connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 900)
        statements: list[str] = []
        state._connection.set_trace_callback(statements.append)
        for asked in (ids, np.array(ids, dtype=object), pd.Index(ids)):
            statements.clear()
            status, source_hash = state.lookup(asked)
            assert state.problem is None
            assert len(status) == len(ids) == len(source_hash)
            assert [s for s in statements if "IN (" in s] and len(statements) == 3  # ceil(2502 / 900)
            expected = {video_id: (status_, hash_) for video_id, hash_, _, status_, _ in rows}
            for video_id, got_status, got_hash in zip(ids, status, source_hash, strict=True):
                assert (got_status, got_hash) == expected.get(video_id, (None, None))
        empty_status, empty_hash = state.lookup([])
        assert len(empty_status) == 0 and len(empty_hash) == 0


def test_table_without_an_index_on_video_id_is_scanned_once_per_lookup(tmp_path, client):
    location = _local_db(
        tmp_path / "unindexed.sqlite",
        "CREATE TABLE processed_items (video_id TEXT, source_hash TEXT, processed_at TEXT, status TEXT)",
        [(f"v{i}", f"h{i}", None, "queued") for i in range(2000)],
    )
    with text_state.open_text_state(client, location, tmp_path) as state:
        statements: list[str] = []
        state._connection.set_trace_callback(statements.append)
        status, source_hash = state.lookup([f"v{i}" for i in range(0, 2000, 3)] + ["zz", "v3"])
        assert len(statements) == 1
    assert list(source_hash[:2]) == ["h0", "h3"] and list(source_hash[-2:]) == [None, "h3"]
    assert set(status[:-2]) == {"queued"}


def test_changed_since_compares_instants_not_strings(tmp_path, client):
    location = _local_db(
        tmp_path / "times.sqlite",
        "CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, processed_at TEXT, status TEXT)",
        [
            ("zulu", "2026-03-01T10:00:00Z", "done"),
            ("plus2", "2026-03-01T11:30:00+02:00", "done"),  # 09:30Z: sorts after 10:00 as a string only
            ("naive", "2026-03-01 10:30:00", "done"),  # no offset: read as UTC
            ("fraction", "2026-03-01T12:00:00.500+02:00", "done"),  # 10:00:00.5Z
            ("null", None, "queued"),
            ("garbage", "yesterday-ish", "queued"),
            ("now", "now", "queued"),  # julianday('now') would parse: must not count
            ("number", "2461100", "queued"),  # a bare Julian day number: must not count
        ],
    )
    with text_state.open_text_state(client, location, tmp_path) as state:
        assert state.cursor == "2026-03-01 10:30:00"
        assert sorted(state.changed_since(None)) == ["fraction", "naive", "plus2", "zulu"]
        assert sorted(state.changed_since("2026-03-01T12:00:00+02:00")) == ["fraction", "naive"]
        assert sorted(state.changed_since("2026-03-01T09:30:00Z")) == ["fraction", "naive", "zulu"]
        assert state.changed_since(state.cursor) == []
        assert state.changed_since("2026-03-01T11:30:00+01:00") == []  # 10:30Z
        # A cursor that is no date reports everything rather than nothing.
        assert sorted(state.changed_since("not a date")) == ["fraction", "naive", "plus2", "zulu"]
        assert state.problem is None


def test_closed_state_refuses_queries(tmp_path, client):
    path = tmp_path / "text.sqlite"
    path.write_bytes(text_state_db([("v1", "h1", "t", "queued", None)]))
    state = text_state.open_text_state(client, str(path), tmp_path)
    state.close()
    state.close()
    with pytest.raises(RuntimeError, match="closed"):
        state.lookup(["v1"])
