"""`lake`: the Delta tables in the bucket, as a run meets them (moto over HTTP, real delta-rs)."""

import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.stores import lake

from .test_pipeline import snapshot

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")


def test_an_unreadable_table_log_stops_the_run_with_exit_7_naming_the_table(client, seed_day):
    seeded = seed_day(videos=20, mix={"full": 1.0})
    pipeline.run(seeded.config(strategies=("concat",)), date(2026, 3, 1))
    log_key = Layout(seeded.root).state_table_key("concat") + "/_delta_log/00000000000000000000.json"
    client.put_object(Bucket=seeded.bucket, Key=log_key, Body=b"{not json")
    before = snapshot(client, seeded.bucket)
    args = ["run", "--run-date", "2026-03-01", "--bucket", seeded.bucket, "--strategy", "concat"]
    result = subprocess.run(
        [CLI, *args, "--state-dir", str(seeded.state_dir)], capture_output=True, text=True
    )
    assert result.returncode == 7, result.stderr[-2000:]
    assert "fusion_concat is not a readable Delta table" in result.stderr
    assert snapshot(client, seeded.bucket) == before


def test_commit_metadata_is_found_behind_commits_that_carry_none(client, bucket):
    location = lake.uri(bucket, "t")
    options = lake.storage_options(client)
    table, created = lake.create(location, pa.schema([("a", pa.int64())]), options)
    assert created
    lake.note(table, pa.schema([("a", pa.int64())]), {"cursor": "first"})
    write_deltalake(table, pa.table({"a": [0]}), mode="append")
    table.update_incremental()
    assert lake.commit_metadata(table, ["cursor"])["cursor"] == "first"
    for n in range(1, 12):  # appends that carry no metadata, like compactions
        write_deltalake(table, pa.table({"a": [n]}), mode="append")
    table.update_incremental()
    assert lake.commit_metadata(table, ["cursor"])["cursor"] == "first"
    lake.note(table, pa.schema([("a", pa.int64())]), {"cursor": "second"})
    table.update_incremental()
    assert lake.commit_metadata(table, ["cursor"])["cursor"] == "second"
    assert lake.read_all(table).num_rows == 12  # a note adds no row
    assert lake.commit_metadata(table, ["other"])["other"] is None
    # a run's commit (it carries run_id) records every key it has: the search stops there
    lake.note(table, pa.schema([("a", pa.int64())]), {"run_id": "2026-03-01-x", "other": "o"})
    table.update_incremental()
    assert lake.commit_metadata(table, ["cursor", "other"]) == {"cursor": None, "other": "o"}


def test_a_column_added_later_reads_as_null_in_older_files(client, bucket):
    location = lake.uri(bucket, "evolving")
    options = lake.storage_options(client)
    old = pa.schema([("k", pa.string())])
    table, _ = lake.create(location, old, options)
    lake.replace(table, pa.table({"k": ["a", "b"]}, schema=old), lake.in_list("k", ["a", "b"]), {})
    new = old.append(pa.field("r", pa.string()))
    lake.add_columns(table, new)
    lake.add_columns(table, new)  # once only
    assert table.history(1)[0]["operation"] == "ADD COLUMN"
    lake.replace(table, pa.table({"k": ["b"], "r": ["x"]}, schema=new), lake.in_list("k", ["b"]), {})
    table.update_incremental()
    rows = lake.select_ids(table, "k", pa.array(["a", "b"]), new).sort_by("k").to_pylist()
    assert rows == [{"k": "a", "r": None}, {"k": "b", "r": "x"}]
    assert lake.writes_since(table, 1) == [("WRITE", None)]  # the column addition is no write


def test_a_second_create_says_so_and_two_imports_land_once(client, bucket):
    location = lake.uri(bucket, "t")
    options = lake.storage_options(client)
    first, created = lake.create(location, pa.schema([("a", pa.int64())]), options)
    assert created and lake.read_all(first).num_rows == 0  # tables are created empty
    _, again = lake.create(location, pa.schema([("a", pa.int64())]), options)
    assert not again
    imported = lake.uri(bucket, "imported")
    table = lake.import_rows(imported, pa.table({"a": [1, 2]}), options, "s3://old/file")
    table = lake.import_rows(imported, pa.table({"a": [1, 2]}), options, "s3://old/file")
    assert sorted(lake.read_all(table)["a"].to_pylist()) == [1, 2]
    assert lake.commit_metadata(table, ["imported_from"])["imported_from"] == "s3://old/file"


def test_ids_with_quotes_are_selected_exactly(client, bucket):
    location = lake.uri(bucket, "t")
    options = lake.storage_options(client)
    ids = ["plain", "it's", "''", "a' OR '1'='1"]
    schema = pa.schema([("video_id", pa.string())])
    table = lake.import_rows(location, pa.table({"video_id": ids + ["other"]}), options, "test")
    assert sorted(
        lake.select_ids(table, "video_id", pa.array(ids), schema)["video_id"].to_pylist()
    ) == sorted(ids)
    lake.replace(table, pa.table({"video_id": ["it's"]}), lake.in_list("video_id", ["it's", "''"]), {})
    table.update_incremental()
    assert sorted(lake.read_all(table)["video_id"].to_pylist()) == sorted(
        ["plain", "it's", "a' OR '1'='1", "other"]
    )
