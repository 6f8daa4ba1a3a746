"""The fusion state as a Delta table (`state.StateStore`) on the moto server: the one-time import of a
seed-era SQLite state file, upsert commits, the narrow reads a run makes, and exit 4 on a real race."""

import sqlite3

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from clipfarm_fusion import read_state
from clipfarm_fusion.core import latest, metadata
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.core.policy import (
    FAIL,
    FAIL_TERMINAL,
    MISSING_TEXT_PENDING,
    SUCCESS_FULL,
    SUCCESS_PLACEHOLDER,
)
from clipfarm_fusion.errors import ConcurrentWriteError, StoreError
from clipfarm_fusion.stores import lake, manifest, state, state_schema
from tests.conftest import replace_manifest

ROOT = "clipfarm"
LAYOUT = Layout(ROOT)
STRATEGY = "concat"
MIRROR_KEY = LAYOUT.state_mirror_key(STRATEGY)
TABLE_KEY = LAYOUT.state_table_key(STRATEGY)

SEED_ERA_DDL = """
CREATE TABLE processed_items (
    video_id TEXT PRIMARY KEY, source_hash TEXT, processed_at TEXT, status TEXT,
    error TEXT, artifact_key TEXT, vector_id TEXT, retry_count INTEGER DEFAULT 0
)"""
SEED_ERA_ROWS = [
    ("old1", "h1", "2025-01-01T00:00:00Z", FAIL, "boom", None, None, 2),
    ("old2", "h2", "2025-01-02T00:00:00Z", SUCCESS_FULL, None, "k/part-0000.npz", "k/part-0000.npz#0", 0),
    (
        "it's",
        "h3",
        "2025-01-03T00:00:00Z",
        SUCCESS_PLACEHOLDER,
        None,
        "k/part-0000.npz",
        "k/part-0000.npz#1",
        0,
    ),
]


def cursors(store, ids):
    """What the store's index says of each id it knows: (captured_ns, hash64), (None, None) if unset."""
    index = store.known()
    at = index.locate(pa.array(ids, pa.string()))
    return {
        video_id: (None, None) if index.unset[p] else (int(index.captured_ns[p]), int(index.hash64[p]))
        for video_id, p in zip(ids, at, strict=True)
        if p >= 0
    }


def row(video_id, status=FAIL, retry=1, **extra):
    base = dict(
        video_id=video_id,
        source_hash="h",
        processed_at="2026-03-01T00:00:00Z",
        status=status,
        error=None,
        artifact_key=None,
        vector_id=None,
        retry_count=retry,
    )
    return base | extra


def sqlite_bytes(tmp_path, ddl=SEED_ERA_DDL, rows=SEED_ERA_ROWS, name="seed.sqlite") -> bytes:
    path = tmp_path / name
    with sqlite3.connect(path) as connection:
        connection.executescript(ddl)
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            connection.executemany(f"INSERT INTO processed_items VALUES ({marks})", rows)
    connection.close()
    return path.read_bytes()


def open_store(client, bucket, state_dir):
    return state.open_store(client, bucket, LAYOUT, STRATEGY, state_dir, 30)


def published(client, bucket):
    return read_state(STRATEGY, bucket=bucket, root=ROOT, client=client)


def table_objects(client, bucket):
    listed = client.list_objects_v2(Bucket=bucket, Prefix=TABLE_KEY + "/")
    return [o["Key"] for o in listed.get("Contents", [])]


def delta_table(client, bucket) -> DeltaTable:
    return DeltaTable(lake.uri(bucket, TABLE_KEY), storage_options=lake.storage_options(client))


def by_id(frame):
    return {r["video_id"]: r for r in frame.to_dict("records")}


# --- a new store, the first commit, upserts ---


def test_a_new_store_is_empty_and_the_first_commit_creates_the_table(client, bucket, tmp_path):
    store = open_store(client, bucket, tmp_path / "state")
    assert store.source == "new state table"
    assert store.table is None and store.text_cursor is None
    assert len(store.known()) == 0
    assert len(store.open_ids()) == 0 and len(store.placeholders()) == 0
    assert store.rows_for(pa.array(["a"])).empty
    assert table_objects(client, bucket) == []  # opening writes nothing
    assert published(client, bucket).empty

    store.commit([row("a", captured_ns=5, hash64=-7), row("b", status=SUCCESS_FULL, retry=0)], {})
    frame = published(client, bucket)
    assert list(frame.columns) == list(state_schema.STATE_COLUMNS)  # the cursor columns stay internal
    assert frame["video_id"].tolist() == ["a", "b"]
    assert frame["retry_count"].tolist() == [1, 0]
    again = open_store(client, bucket, tmp_path / "state")
    assert again.source == "state table" and again.version == 1
    assert cursors(again, ["a", "b", "c"]) == {"a": (5, -7), "b": (None, None)}


def test_commit_merges_updating_matched_rows_inserting_new_ones_and_leaving_others(client, bucket, tmp_path):
    first = open_store(client, bucket, tmp_path)
    first.commit([row("a", retry=1), row("b", retry=1), row("c", status=SUCCESS_FULL, retry=0)], {})
    second = open_store(client, bucket, tmp_path)
    second.commit(
        [
            row("b", status=FAIL_TERMINAL, retry=4, error="gave up", captured_ns=9, hash64=3),
            row("d", retry=0),
        ],
        {},
    )
    rows = by_id(published(client, bucket))
    assert sorted(rows) == ["a", "b", "c", "d"]  # one row per video: b was updated, not appended
    assert (rows["a"]["status"], rows["a"]["retry_count"]) == (FAIL, 1)
    assert (rows["b"]["status"], rows["b"]["retry_count"], rows["b"]["error"]) == (
        FAIL_TERMINAL,
        4,
        "gave up",
    )
    assert rows["c"]["status"] == SUCCESS_FULL
    assert rows["d"]["retry_count"] == 0
    table = delta_table(client, bucket)
    assert table.version() == 2  # the empty create, the first upsert, then one more (a replaceWhere write)
    assert [h["operation"] for h in table.history()][0] == "WRITE"


# --- the one-time import of a seed-era SQLite state file ---


def test_imports_a_seed_era_mirror_once_and_moves_it_aside(client, bucket, tmp_path):
    body = sqlite_bytes(tmp_path)
    client.put_object(Bucket=bucket, Key=MIRROR_KEY, Body=body)
    before = published(client, bucket)  # not imported yet: read in place
    assert before["video_id"].tolist() == sorted(r[0] for r in SEED_ERA_ROWS)

    store = open_store(client, bucket, tmp_path / "state")
    where = f"s3://{bucket}/{MIRROR_KEY}"
    assert store.source == f"imported 3 rows from {where} (moved to {where}.imported)"
    after = published(client, bucket)
    assert after.equals(before)  # every row and column identical
    assert by_id(after)["old1"]["retry_count"] == 2 and by_id(after)["old1"]["error"] == "boom"
    assert store.text_cursor is None
    assert lake.commit_metadata(store.table, ["imported_from"])["imported_from"] == where

    store.commit([row("old1", retry=3), row("new1", status=SUCCESS_FULL, retry=0)], {"text_cursor": "t1"})
    assert client.get_object(Bucket=bucket, Key=MIRROR_KEY + ".imported")["Body"].read() == body  # as it was
    listed = [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=MIRROR_KEY)["Contents"]]
    assert listed == [MIRROR_KEY + ".imported"], "nothing left at the old path"
    client.put_object(
        Bucket=bucket, Key=MIRROR_KEY, Body=sqlite_bytes(tmp_path, rows=[], name="empty.sqlite")
    )
    again = open_store(client, bucket, tmp_path / "state")  # the table now wins: no second import
    assert again.source == "state table" and again.text_cursor == "t1"
    rows = by_id(published(client, bucket))
    assert sorted(rows) == ["it's", "new1", "old1", "old2"] and rows["old1"]["retry_count"] == 3


HASH_A, HASH_B = "0123456789abcdef" + "0" * 48, "fedcba9876543210" + "1" * 48


def fused(video_id, source_hash, captured_at):
    return {"video_id": video_id, "source_hash": source_hash, "captured_at": captured_at, "fused_key": "k"}


@pytest.mark.parametrize("where", ["seed-era file", "table"])
def test_imported_rows_get_the_cursor_columns_from_their_hash_and_the_manifest(
    client, bucket, tmp_path, where
):
    rows = [
        ("fused", HASH_A, "t", SUCCESS_FULL, None, "k", "k#0", 0),
        ("rehashed", HASH_B, "t", FAIL, "boom", None, None, 1),  # the manifest has an older hash only
        ("unfused", HASH_B, "t", FAIL, "boom", None, None, 1),
        ("no-hash", None, "t", FAIL, None, None, None, 1),
    ]
    client.put_object(Bucket=bucket, Key=MIRROR_KEY, Body=sqlite_bytes(tmp_path, rows=rows))
    published_manifest = lake.conform(
        pa.Table.from_pylist(
            [fused("fused", HASH_A, "2026-03-01T10:00:00+02:00"), fused("rehashed", HASH_A, "2026-03-01")]
        ),
        manifest.SCHEMA,
    )
    if where == "table":
        replace_manifest(client, bucket, ROOT, STRATEGY, published_manifest)
    else:
        client.put_object(
            Bucket=bucket, Key=LAYOUT.manifest_key(STRATEGY), Body=manifest.encode(published_manifest)
        )
    store = open_store(client, bucket, tmp_path)
    ids = ["fused", "rehashed", "unfused", "no-hash"]
    rows = store.rows_for(pa.array(ids)).reindex(ids)[list(state_schema.CURSOR_COLUMNS)]
    recorded = {i: tuple(None if pd.isna(v) else int(v) for v in values) for i, values in rows.iterrows()}
    hash_a, hash_b = metadata.hash64_of_hex([HASH_A, HASH_B]).tolist()
    eight_utc = int(latest.instants(["2026-03-01T08:00:00Z"])[0])
    assert recorded == {
        "fused": (eight_utc, hash_a),
        "rehashed": (None, hash_b),
        "unfused": (None, hash_b),
        "no-hash": (None, None),
    }
    assert cursors(store, ids) == {"fused": (eight_utc, hash_a), **dict.fromkeys(ids[1:], (None, None))}
    assert sorted(published(client, bucket)["video_id"]) == ["fused", "no-hash", "rehashed", "unfused"]


def test_a_corrupt_seed_era_manifest_stops_the_state_import_before_anything_is_written(
    client, bucket, tmp_path
):
    client.put_object(Bucket=bucket, Key=MIRROR_KEY, Body=sqlite_bytes(tmp_path))
    client.put_object(Bucket=bucket, Key=LAYOUT.manifest_key(STRATEGY), Body=b"not parquet")
    with pytest.raises(StoreError, match="not a readable fused manifest"):
        open_store(client, bucket, tmp_path)
    assert table_objects(client, bucket) == []


def test_imports_a_local_working_copy_when_there_is_no_mirror(client, bucket, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    path = Layout.state_path(state_dir, STRATEGY)
    path.write_bytes(sqlite_bytes(tmp_path))
    copy = path.read_bytes()
    store = open_store(client, bucket, state_dir)
    assert store.source == f"imported 3 rows from {path} (moved to {path}.imported)"
    rows = by_id(published(client, bucket))
    assert sorted(rows) == sorted(r[0] for r in SEED_ERA_ROWS)
    assert rows["old2"]["vector_id"] == "k/part-0000.npz#0"
    assert not path.exists() and path.with_name(path.name + ".imported").read_bytes() == copy  # moved aside
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=MIRROR_KEY)  # nothing mirrored


def test_the_mirror_wins_over_a_local_working_copy(client, bucket, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    Layout.state_path(state_dir, STRATEGY).write_bytes(
        sqlite_bytes(tmp_path, rows=[("local", "h", "t", FAIL, None, None, None, 1)], name="local.sqlite")
    )
    client.put_object(Bucket=bucket, Key=MIRROR_KEY, Body=sqlite_bytes(tmp_path))
    store = open_store(client, bucket, state_dir)
    assert store.source.endswith(
        f"from s3://{bucket}/{MIRROR_KEY} (moved to s3://{bucket}/{MIRROR_KEY}.imported)"
    )
    assert "local" not in set(published(client, bucket)["video_id"])


def test_the_oldest_files_lacking_columns_get_defaults(client, bucket, tmp_path):
    body = sqlite_bytes(
        tmp_path,
        ddl="CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, status TEXT)",
        rows=[("a", FAIL), ("b", SUCCESS_FULL)],
    )
    client.put_object(Bucket=bucket, Key=MIRROR_KEY, Body=body)
    store = open_store(client, bucket, tmp_path)
    assert store.source.startswith("imported 2 rows")
    frame = published(client, bucket)
    assert list(frame.columns) == list(state_schema.STATE_COLUMNS)
    assert frame["retry_count"].tolist() == [0, 0]
    for column in ("source_hash", "processed_at", "error", "artifact_key", "vector_id"):
        assert frame[column].isna().all(), column
    assert store.open_ids().to_pylist() == ["a"]


def test_an_integer_video_id_in_a_seed_era_file_is_imported_as_text(client, bucket, tmp_path):
    body = sqlite_bytes(
        tmp_path,
        ddl="CREATE TABLE processed_items (video_id PRIMARY KEY, status TEXT, retry_count INTEGER)",
        rows=[(123, FAIL, None)],
    )
    client.put_object(Bucket=bucket, Key=MIRROR_KEY, Body=body)
    open_store(client, bucket, tmp_path)
    frame = published(client, bucket)
    assert frame["video_id"].tolist() == ["123"] and frame["retry_count"].tolist() == [0]


def other_table(tmp_path):
    return sqlite_bytes(tmp_path, ddl="CREATE TABLE something_else (x TEXT)", rows=[], name="other.sqlite")


CORRUPT = {
    "empty": lambda tmp_path: b"",
    "random-bytes": lambda tmp_path: b"\x00garbage" * 100,
    "truncated": lambda tmp_path: sqlite_bytes(tmp_path)[:200],
    "another-table": other_table,
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_corrupt_seed_era_mirror_stops_before_any_table_is_created(client, bucket, tmp_path, kind):
    body = CORRUPT[kind](tmp_path)
    client.put_object(Bucket=bucket, Key=MIRROR_KEY, Body=body)
    with pytest.raises(StoreError, match="not a usable fusion state DB") as raised:
        open_store(client, bucket, tmp_path / "state")
    assert f"s3://{bucket}/{MIRROR_KEY}" in str(raised.value)
    assert table_objects(client, bucket) == []
    assert lake.open_table(lake.uri(bucket, TABLE_KEY), lake.storage_options(client)) is None
    assert client.get_object(Bucket=bucket, Key=MIRROR_KEY)["Body"].read() == body
    with pytest.raises(StoreError, match="not a usable fusion state DB"):
        published(client, bucket)  # read_state does not pass it off as "no state" either


def test_a_corrupt_local_working_copy_stops_before_any_table_is_created(client, bucket, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    path = Layout.state_path(state_dir, STRATEGY)
    path.write_bytes(other_table(tmp_path))
    with pytest.raises(StoreError, match="not a usable fusion state DB") as raised:
        open_store(client, bucket, state_dir)
    assert str(path) in str(raised.value)
    assert table_objects(client, bucket) == []


# --- the narrow reads ---


def seeded_store(client, bucket, tmp_path, ids_by_status):
    rows = [row(v, status=s) for s, ids in ids_by_status.items() for v in ids]
    open_store(client, bucket, tmp_path).commit(rows, {})
    return open_store(client, bucket, tmp_path)


def test_known_has_every_video_with_its_cursor_columns(client, bucket, tmp_path):
    open_store(client, bucket, tmp_path).commit(
        [row("a", captured_ns=1, hash64=-1), row("b"), row("c", captured_ns=3, hash64=2**62)], {}
    )
    store = open_store(client, bucket, tmp_path)
    assert len(store.known()) == 3
    assert cursors(store, ["a", "b", "c", "d"]) == {"a": (1, -1), "b": (None, None), "c": (3, 2**62)}


def test_open_ids_are_the_items_not_terminal(client, bucket, tmp_path):
    store = seeded_store(
        client,
        bucket,
        tmp_path,
        {
            SUCCESS_FULL: ["done"],
            SUCCESS_PLACEHOLDER: ["placeholder"],
            FAIL_TERMINAL: ["dead"],
            FAIL: ["retry"],
            MISSING_TEXT_PENDING: ["pending"],
            None: ["no-status"],
        },
    )
    assert sorted(store.open_ids().to_pylist()) == ["no-status", "pending", "retry"]


@pytest.mark.parametrize("bulk", [False, True], ids=["one-batch", "many-batches"])
def test_placeholders_all_or_among_ids(client, bucket, tmp_path, monkeypatch, bulk):
    store = seeded_store(
        client,
        bucket,
        tmp_path,
        {SUCCESS_PLACEHOLDER: ["p1", "p2", "it's"], SUCCESS_FULL: ["f1"], FAIL: ["x"]},
    )
    monkeypatch.setattr(lake, "ROW_GROUP", 2 if bulk else 65_536)  # several batches or one
    assert sorted(store.placeholders().to_pylist()) == ["it's", "p1", "p2"]
    among = pa.array(["p1", "f1", "it's", "unknown", "x"], pa.string())
    assert sorted(store.placeholders(among=among).to_pylist()) == ["it's", "p1"]
    assert store.placeholders(among=pa.array([], pa.string())).to_pylist() == []


@pytest.mark.parametrize("bulk", [False, True], ids=["one-batch", "many-batches"])
def test_rows_for_returns_the_rows_of_the_ids_asked(client, bucket, tmp_path, monkeypatch, bulk):
    open_store(client, bucket, tmp_path).commit(
        [row(f"v{i}", retry=i, captured_ns=i * 10, hash64=-i) for i in range(6)] + [row("it's", retry=7)],
        {},
    )
    store = open_store(client, bucket, tmp_path)
    monkeypatch.setattr(lake, "ROW_GROUP", 3 if bulk else 65_536)
    ids = pa.array(["v1", "v4", "it's", "nope", "v5"], pa.string())
    frame = store.rows_for(ids)
    assert frame.index.name == "video_id"
    assert sorted(frame.index) == ["it's", "v1", "v4", "v5"]
    assert list(frame.columns) == [c for c in state_schema.SCHEMA.names if c != "video_id"]
    assert frame.loc["v4", "retry_count"] == 4 and frame["retry_count"].dtype == "int64"
    assert frame.loc["v4", "captured_ns"] == 40 and frame.loc["v4", "hash64"] == -4
    assert pd.isna(frame.loc["it's", "captured_ns"]) and frame["captured_ns"].dtype == "Int64"
    assert store.rows_for(pa.array([], pa.string())).empty


def test_a_store_reads_the_version_it_opened(client, bucket, tmp_path):
    open_store(client, bucket, tmp_path).commit([row("a")], {})
    store = open_store(client, bucket, tmp_path)
    open_store(client, bucket, tmp_path).commit([row("b")], {})  # another run, after this one read
    assert list(cursors(store, ["a", "b"])) == ["a"]


# --- races ---


def test_a_store_opened_before_another_runs_commit_sees_exactly_the_videos_that_run_wrote(
    client, bucket, tmp_path
):
    """The commit's per-video conflict test: rows another run committed after this store's version are
    contested, rows of other videos are not (two days with disjoint videos both commit), and a commit
    without our run_id metadata (an older version) contests everything."""
    open_store(client, bucket, tmp_path).commit([row("a", retry=1)], {"run_id": "2026-03-01-r0"})
    first, second = open_store(client, bucket, tmp_path), open_store(client, bucket, tmp_path)
    written = [dict(row("a", retry=2), run_id="2026-03-02-r1"), dict(row("b"), run_id="2026-03-02-r1")]
    first.commit(written, {"run_id": "2026-03-02-r1"})
    assert second.contested(pa.array(["a", "c"])) == ["a"]
    assert second.contested(pa.array(["c", "d"])) == []
    third = open_store(client, bucket, tmp_path)
    assert third.contested(pa.array(["a", "b"])) == []  # nothing since its own read
    first.commit([row("e")], {})  # a writer that records no run_id
    assert third.contested(pa.array(["a", "z"])) == ["a", "z"]


def test_two_new_stores_racing_to_create_the_table_the_second_refuses(client, bucket, tmp_path):
    first, second = open_store(client, bucket, tmp_path), open_store(client, bucket, tmp_path)
    first.commit([row("a")], {"text_cursor": "t1"})
    with pytest.raises(ConcurrentWriteError, match="CREATE"):
        second.commit([row("a", retry=9), row("b")], {"text_cursor": "t2"})
    frame = published(client, bucket)
    assert frame["video_id"].tolist() == ["a"] and frame["retry_count"].tolist() == [1]
    assert delta_table(client, bucket).version() == 1  # the empty create, then the first upsert
    assert open_store(client, bucket, tmp_path).text_cursor == "t1"


def test_a_compaction_between_open_and_commit_is_not_a_conflict(client, bucket, tmp_path):
    for i in range(3):  # three commits: three small files to compact
        open_store(client, bucket, tmp_path).commit([row(f"v{i}")], {"text_cursor": f"t{i}"})
    store = open_store(client, bucket, tmp_path)
    maintenance = delta_table(client, bucket)
    metrics = maintenance.optimize.compact()
    assert metrics["numFilesRemoved"] >= 2  # it really rewrote the files the store read
    assert maintenance.history(1)[0]["operation"] == "OPTIMIZE"
    store.commit([row("v0", retry=5), row("new")], {"text_cursor": "t9"})
    rows = by_id(published(client, bucket))
    assert sorted(rows) == ["new", "v0", "v1", "v2"] and rows["v0"]["retry_count"] == 5
    assert open_store(client, bucket, tmp_path).text_cursor == "t9"


# --- the text cursor ---


def test_text_cursor_round_trips_through_the_commit_metadata(client, bucket, tmp_path):
    open_store(client, bucket, tmp_path).commit([row("a")], {"text_cursor": "2026-03-01T10:00:00Z"})
    store = open_store(client, bucket, tmp_path)
    assert store.text_cursor == "2026-03-01T10:00:00Z"
    store.commit([row("b")], {"text_cursor": "2026-03-02T10:00:00Z"})
    store = open_store(client, bucket, tmp_path)
    assert store.text_cursor == "2026-03-02T10:00:00Z"
    store.commit([row("c")], {})  # a commit that carries none keeps the last one
    delta_table(client, bucket).optimize.compact()  # and so does a compaction
    assert open_store(client, bucket, tmp_path).text_cursor == "2026-03-02T10:00:00Z"
    assert published(client, bucket)["video_id"].tolist() == ["a", "b", "c"]


def test_a_commit_of_the_cursor_alone_records_it(client, bucket, tmp_path):
    """What the pipeline does when no state row changed but the text stage moved on
    (`if changed or store.marks_move(cursors)`): without it every later run would ask the text stage
    about the same rows again."""
    open_store(client, bucket, tmp_path).commit([row("a")], {"text_cursor": "2026-03-01T10:00:00Z"})
    store = open_store(client, bucket, tmp_path)
    assert store.marks_move({"text_cursor": "2026-03-02T10:00:00Z"})
    store.commit([], {"text_cursor": "2026-03-02T10:00:00Z"})
    again = open_store(client, bucket, tmp_path)
    assert again.text_cursor == "2026-03-02T10:00:00Z"
    assert not again.marks_move({"text_cursor": "2026-03-02T10:00:00Z"})
    assert published(client, bucket)["video_id"].tolist() == ["a"]


def test_a_first_commit_of_the_cursor_alone_creates_an_empty_table(client, bucket, tmp_path):
    open_store(client, bucket, tmp_path).commit([], {"text_cursor": "t1"})
    store = open_store(client, bucket, tmp_path)
    assert store.source == "state table" and store.text_cursor == "t1"
    assert published(client, bucket).empty


def test_marks_move_only_when_the_text_cursor_changes(client, bucket, tmp_path):
    fresh = open_store(client, bucket, tmp_path)
    assert fresh.marks_move({"text_cursor": "t1"})
    assert not fresh.marks_move({})
    fresh.commit([row("a")], {"text_cursor": "t1"})
    store = open_store(client, bucket, tmp_path)
    assert not store.marks_move({"text_cursor": "t1"})
    assert not store.marks_move({})
    assert store.marks_move({"text_cursor": "t2"})
