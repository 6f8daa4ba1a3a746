"""`clipfarm-fusion` as a user runs it: a real process, env-configured S3, exit codes, summary JSON."""

import json
import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.core.policy import FUSED_STATUSES as FUSED
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.read.tables import manifest_table
from clipfarm_fusion.stores import lake, s3io

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")


def cli(*args, env=None, cwd=None):
    environment = {k: v for k, v in os.environ.items() if k != "CLIPFARM_BUCKET"} | (env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=environment, cwd=cwd, timeout=300)


@pytest.mark.s3_backends
def test_run_prints_table_and_writes_matching_json(seed_day, tmp_path):
    seeded = seed_day(videos=50)
    out = tmp_path / "summary.json"
    result = cli(
        "run",
        "--run-date",
        "2026-03-01",
        "--state-dir",
        str(seeded.state_dir),
        "--summary-json",
        str(out),
        env={"CLIPFARM_BUCKET": seeded.bucket},
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["run_date"] == "2026-03-01" and summary["bucket"] == seeded.bucket
    assert summary["root"] == "clipfarm"
    assert list(summary["strategies"]) == ["concat", "sum_pool", "max_pool"]
    expected = {}
    for status in seeded.day.expected_status().values():
        expected[status] = expected.get(status, 0) + 1
    for strategy in summary["strategies"].values():
        assert strategy["counts"] == expected
        assert strategy["delta"] == 50
        for key in (
            "samples",
            "errors",
            "fused_dim",
            "shards_written",
            "manifest_added",
            "manifest_updated",
            "seconds",
        ):
            assert key in strategy
        assert all(
            strategy["errors"][v].split(":")[0].endswith("embedding") or "video_id" in strategy["errors"][v]
            for v in strategy["samples"].get("fail", [])
        )
    concat = summary["strategies"]["concat"]
    assert concat["fused_dim"] == 2305
    assert concat["shards_written"] == ["clipfarm/fused/concat/shards/date=2026-03-01/part-0000.npz"]
    table_lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    for status, count in expected.items():
        assert table_lines[status] == [str(count)] * 3
    assert table_lines["manifest_added"] == [str(concat["manifest_added"])] * 3


def test_single_strategy_and_flags(seed_day, client, tmp_path):
    seeded = seed_day(videos=20)
    meta = tmp_path / "horizon.csv"
    meta.write_bytes(seeded.day.metadata_csv)
    out = tmp_path / "s.json"
    args = (
        "run",
        "--run-date",
        "2026-03-01",
        "--strategy",
        "sum_pool",
        "--bucket",
        seeded.bucket,
        "--metadata",
        str(meta),
        "--state-dir",
        str(tmp_path / "st"),
        "--no-text-mask",
        "--summary-json",
        str(out),
    )
    result = cli(*args, "--max-items", "5")
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert list(summary["strategies"]) == ["sum_pool"]
    first = summary["strategies"]["sum_pool"]
    assert first["fused_dim"] == 768
    # the state and the manifest are tables in the bucket; --state-dir holds only the text-stage cache
    assert (
        first["state_key"] == "clipfarm/state/fusion_sum_pool" and first["state_source"] == "new state table"
    )
    assert first["manifest_key"] == "clipfarm/fused/sum_pool/manifest"
    assert s3io.list_keys(client, seeded.bucket, f"{first['state_key']}/_delta_log/")
    assert only_the_text_cache(tmp_path / "st")
    read = first["samples"]["success_full"]
    assert first["counts"] == {"invalid_video_id": 1, "success_full": 5} and len(read) == 5
    assert first["deferred"] == 14, "--max-items 5: five read, the rest deferred"
    published = read_state("sum_pool", bucket=seeded.bucket, client=client)
    assert published["video_id"].tolist() == sorted(read) and set(published["status"]) == {"success_full"}
    assert sorted(read_manifest("sum_pool", bucket=seeded.bucket, client=client)["video_id"]) == sorted(read)

    # a fresh --state-dir continues from the tables: the five are not read again
    again = cli(*[str(tmp_path / "st2") if arg == str(tmp_path / "st") else arg for arg in args])
    assert again.returncode == 0, again.stderr
    second = json.loads(out.read_text())["strategies"]["sum_pool"]
    assert second["state_source"] == "state table" and second["deferred"] == 0
    assert second["delta"] == 20 - 5 and sum(second["counts"].values()) == 15
    assert not set(read) & {video_id for ids in second["samples"].values() for video_id in ids}
    assert len(read_state("sum_pool", bucket=seeded.bucket, client=client)) == 19  # all but the unsafe id
    assert only_the_text_cache(tmp_path / "st2")


def only_the_text_cache(state_dir: Path) -> bool:
    """Whether `state_dir` holds nothing but the text-stage snapshot cache (no state of ours)."""
    return {path.relative_to(state_dir).parts[0] for path in state_dir.rglob("*")} <= {"text_state"}


def test_no_bucket_is_exit_2_saying_what_to_set(tmp_path):
    result = cli("run", "--run-date", "2026-03-01", cwd=tmp_path)
    assert result.returncode == 2
    assert "CLIPFARM_BUCKET" in result.stderr and "--bucket" in result.stderr


def test_bad_usage_is_exit_2(tmp_path):
    assert cli("run", "--run-date", "yesterday", cwd=tmp_path).returncode == 2
    result = cli(
        "run", "--run-date", "2026-03-01", "--bucket", "some-bucket", "--strategy", "median", cwd=tmp_path
    )
    assert result.returncode == 2 and "concat, sum_pool, max_pool" in result.stderr


def test_missing_metadata_and_missing_bucket_are_exit_2(bucket, tmp_path):
    result = cli("run", "--run-date", "2026-03-01", "--bucket", bucket, "--state-dir", str(tmp_path))
    assert result.returncode == 2 and "--metadata" in result.stderr
    result = cli(
        "run", "--run-date", "2026-03-01", "--bucket", "no-such-bucket-x", "--state-dir", str(tmp_path)
    )
    assert result.returncode == 2 and "NoSuchBucket" in result.stderr


def test_schema_drift_is_exit_3_naming_the_dims(client, seed_day):
    seeded = seed_day(videos=20, mix={"full": 1.0})
    args = (
        "run",
        "--run-date",
        "2026-03-01",
        "--bucket",
        seeded.bucket,
        "--strategy",
        "concat",
        "--state-dir",
        str(seeded.state_dir),
    )
    assert cli(*args).returncode == 0
    rng = np.random.default_rng(3)
    for video_id in seeded.day.cases:
        body = synthetic.npy_bytes(rng.standard_normal(1024).astype(np.float32))
        client.put_object(Bucket=seeded.bucket, Key=f"clipfarm/embeddings/audio/{video_id}.npy", Body=body)
    metadata = seeded.day.metadata_csv.decode().replace("/shorts/", "/shorts/new/")
    client.put_object(
        Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=metadata.encode()
    )
    result = cli(*args)
    assert result.returncode == 3
    assert (
        "1024-d" in result.stderr and "audio_dim=768" in result.stderr and "migrate-schema" in result.stderr
    )


def test_help_explains_the_commands():
    result = cli("run", "--help")
    assert result.returncode == 0
    for flag in (
        "--run-date",
        "--strategy",
        "--bucket",
        "--root",
        "--metadata",
        "--text-state",
        "--state-dir",
        "--max-items",
        "--shard-size",
        "--max-fail-retries",
        "--text-dim",
        "--include-captured-at-in-hash",
        "--no-text-mask",
        "--summary-json",
        "Exit codes",
    ):
        assert flag in result.stdout


def test_demo_days_2_adds_and_fuses_both_days_with_no_aws_setup(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = tmp_path / "demo.json"
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    result = subprocess.run(
        [
            CLI,
            "demo",
            "--days",
            "2",
            "--videos",
            "40",
            "--summary-json",
            str(out),
            "--out",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first, second = json.loads(out.read_text())  # one run summary per day, oldest first
    assert [first["run_date"], second["run_date"]] == [str(yesterday - timedelta(days=1)), str(yesterday)]
    for summary in (first, second):
        assert set(summary["strategies"]) == {"concat", "sum_pool", "max_pool"}
        assert summary["strategies"]["concat"]["counts"]["success_full"] > 0
        assert f"run_date={summary['run_date']} bucket=clipfarm-demo" in result.stdout
    # the second day retried what the first left open, and upstream had sent it meanwhile
    opened = sum(n for s, n in first["strategies"]["concat"]["counts"].items() if s not in FUSED)
    assert second["strategies"]["concat"]["delta"] >= 40 + opened
    assert second["strategies"]["concat"]["manifest_updated"] > 0  # placeholders that got their text
    assert f"{second['run_date']} fail rate" in result.stdout and "clipfarm-demo" in result.stdout
    # the copy holds each strategy's manifest and state tables, and reads back as a bucket
    copied = tmp_path / "demo" / "s3" / "clipfarm-demo" / "clipfarm"
    for strategy in ("concat", "sum_pool", "max_pool"):
        assert list((copied / "fused" / strategy / "manifest" / "_delta_log").glob("*.json")), strategy
        assert list((copied / "state" / f"fusion_{strategy}" / "_delta_log").glob("*.json")), strategy
    video_id = second["strategies"]["concat"]["samples"]["success_full"][0]
    shown = subprocess.run(
        [
            CLI,
            "inspect",
            "--strategy",
            "concat",
            "--from-demo",
            str(tmp_path / "demo"),
            "--video-id",
            video_id,
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    rows = sum(summary["strategies"]["concat"]["manifest_added"] for summary in (first, second))
    assert (
        f"{rows} rows, {rows} videos" in shown.stdout
        and f"{video_id}  clipfarm/fused/concat/" in shown.stdout
    )
    for summary in (first, second):
        assert f"    {summary['run_date']}  " in shown.stdout  # both days' shards


def test_migrate_schema_accepts_new_dims_and_keeps_old_rows_readable(client, seed_day):
    seeded = seed_day(videos=20, mix={"full": 1.0})
    run = (
        "run",
        "--run-date",
        "2026-03-01",
        "--bucket",
        seeded.bucket,
        "--strategy",
        "concat",
        "--state-dir",
        str(seeded.state_dir),
    )
    migrate = ("migrate-schema", "--strategy", "concat", "--bucket", seeded.bucket)
    assert cli(*migrate).returncode == 2, "no lock yet: nothing to migrate"
    assert cli(*run).returncode == 0
    rng = np.random.default_rng(4)
    for video_id in seeded.day.cases:
        body = synthetic.npy_bytes(rng.standard_normal(1024).astype(np.float32))
        client.put_object(Bucket=seeded.bucket, Key=f"clipfarm/embeddings/audio/{video_id}.npy", Body=body)
    metadata = seeded.day.metadata_csv.decode().replace("/shorts/", "/shorts/new/")
    client.put_object(
        Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=metadata.encode()
    )
    assert cli(*run).returncode == 3

    dry = cli(*migrate, "--dry-run")
    assert dry.returncode == 0 and "would change" in dry.stdout and "(768, 1024, 768)" in dry.stdout
    result = cli(*migrate)
    assert result.returncode == 0, result.stderr
    assert "20 manifest rows are fused under an older lock" in result.stdout
    assert "clipfarm-fusion refuse --strategy concat --all" in result.stdout
    lock = json.loads(
        client.get_object(Bucket=seeded.bucket, Key="clipfarm/fused/concat/schema.json")["Body"].read()
    )
    assert (lock["audio_dim"], lock["fused_dim"]) == (1024, 2561)
    assert lock["history"][0]["fused_dim"] == 2305 and "replaced_at" in lock["history"][0]
    assert "nothing to do" in cli(*migrate).stdout

    assert cli(*run).returncode == 0
    from clipfarm_fusion.stores import shards

    table = manifest_table(client, seeded.bucket, "clipfarm", "concat")
    assert sorted(set(table["fused_dim"].to_pylist())) == [2305, 2561]
    for row in table.to_pylist():
        shard = shards.decode(client.get_object(Bucket=seeded.bucket, Key=row["fused_key"])["Body"].read())
        assert shard["vectors"].shape[1] == row["fused_dim"]
        assert shard["video_ids"][row["shard_idx"]] == row["video_id"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"title,views\nx,1\n", "needs a video_id column"),
        ("video_id,url\nabc,caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ],
    ids=["empty", "no-columns", "latin-1"],
)
def test_bad_metadata_is_exit_2_and_writes_nothing(seed_day, client, body, message):
    seeded = seed_day(videos=10)
    client.put_object(Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=body)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=seeded.bucket)
    before = {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}
    result = cli(
        "run", "--run-date", "2026-03-01", "--bucket", seeded.bucket, "--state-dir", str(seeded.state_dir)
    )
    assert result.returncode == 2 and message in result.stderr
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=seeded.bucket)
    assert {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])} == before  # no table
    assert only_the_text_cache(seeded.state_dir)


def test_inspect_and_export_through_the_command_line(seed_day, tmp_path):
    seeded = seed_day(videos=20, mix={"full": 0.8, "placeholder": 0.2})
    env = {"CLIPFARM_BUCKET": seeded.bucket}
    assert (
        cli("run", "--run-date", "2026-03-01", "--state-dir", str(seeded.state_dir), env=env).returncode == 0
    )
    video_id = next(iter(seeded.day.cases))
    shown = cli("inspect", "--strategy", "concat", "--video-id", video_id, "--video-id", "nope", env=env)
    assert shown.returncode == 0, shown.stderr
    assert video_id in shown.stdout and "not in manifest" in shown.stdout and "2305" in shown.stdout
    out = tmp_path / "concat.parquet"
    exported = cli("export", "--strategy", "concat", "--out", str(out), "--date", "2026-03-01", env=env)
    assert exported.returncode == 0, exported.stderr
    table = pq.read_table(out)
    assert table.num_rows == 20 and "vector" in table.column_names
    assert cli("export", "--strategy", "concat", "--out", str(tmp_path / "x.csv"), env=env).returncode == 2


DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)


def two_days_of_concat(client, seed_day) -> str:
    """concat run by the command line on two days (20 videos, then 10 more, all fusable, so the second
    commit to each table only adds rows: a file of its own): its bucket."""
    seeded = seed_day(videos=20, run_date=DAY1, mix={"full": 1.0})
    run = ("run", "--strategy", "concat", "--bucket", seeded.bucket, "--state-dir", str(seeded.state_dir))
    assert cli(*run, "--run-date", str(DAY1)).returncode == 0
    second, objects = synthetic.make_day(10, run_date=DAY2, prefix="b", seed=1, mix={"full": 1.0})
    synthetic.seed(client, seeded.bucket, seeded.root, second, objects, threads=8)
    horizon = seeded.day.metadata_csv + second.metadata_csv.split(b"\n", 1)[1]
    client.put_object(Bucket=seeded.bucket, Key=Layout(seeded.root).metadata_key(), Body=horizon)
    result = cli(*run, "--run-date", str(DAY2))
    assert result.returncode == 0, result.stderr
    return seeded.bucket


def live_files(client, bucket: str, prefix: str) -> int:
    """How many data files the table's current version reads."""
    return len(lake.open_table(lake.uri(bucket, prefix), lake.storage_options(client)).file_uris())


def table_objects(client, bucket: str, prefix: str) -> tuple[list[str], list[str]]:
    """(data files, log files) under a table's prefix."""
    keys = s3io.list_keys(client, bucket, prefix + "/")
    return [k for k in keys if "/_delta_log/" not in k], [k for k in keys if "/_delta_log/" in k]


def published(bucket: str, client) -> tuple[pd.DataFrame, pd.DataFrame]:
    manifest = read_manifest("concat", bucket=bucket, client=client)
    manifest = manifest.sort_values(["video_id", "source_hash"], ignore_index=True)
    return manifest, read_state("concat", bucket=bucket, client=client)


def upkeep_lines(stdout: str) -> dict[str, str]:
    """`maintain`'s line per table, by the table's s3:// location."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if line.strip())


@pytest.mark.s3_backends
def test_maintain_compacts_keeps_every_row_and_vacuums_the_replaced_files(client, seed_day):
    bucket = two_days_of_concat(client, seed_day)
    layout = Layout("clipfarm")
    tables = {
        f"s3://{bucket}/{layout.manifest_table_key('concat')}": layout.manifest_table_key("concat"),
        f"s3://{bucket}/{layout.state_table_key('concat')}": layout.state_table_key("concat"),
    }
    rows = published(bucket, client)
    assert len(rows[0]) == len(rows[1]) == 30
    before = {uri: table_objects(client, bucket, prefix) for uri, prefix in tables.items()}
    assert all(live_files(client, bucket, prefix) == 2 for prefix in tables.values()), "a file per commit"

    done = cli("maintain", "--strategy", "concat", "--bucket", bucket)  # the default retention: 7d
    assert done.returncode == 0, done.stderr
    lines = upkeep_lines(done.stdout)
    assert set(lines) == set(tables)
    for uri, prefix in tables.items():
        assert lines[uri].endswith("compacted 2 files into 1, vacuumed 0 unreferenced files"), lines[uri]
        assert live_files(client, bucket, prefix) == 1
        data, log = table_objects(client, bucket, prefix)
        assert set(before[uri][0]) < set(data), "nothing is deleted inside the retention window"
        assert any(key.endswith(".checkpoint.parquet") for key in log), "a checkpoint was written"
    for after, was in zip(published(bucket, client), rows, strict=True):
        pd.testing.assert_frame_equal(after, was)

    # what vacuum would delete, deleting nothing; then deleting exactly that
    counts = {uri: len(table_objects(client, bucket, prefix)[0]) for uri, prefix in tables.items()}
    dry = cli("maintain", "--strategy", "concat", "--bucket", bucket, "--retention", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    would = {
        uri: int(line.split("vacuumed ")[1].split()[0]) for uri, line in upkeep_lines(dry.stdout).items()
    }
    assert {uri: len(table_objects(client, bucket, prefix)[0]) for uri, prefix in tables.items()} == counts
    vacuum = cli("maintain", "--strategy", "concat", "--bucket", bucket, "--retention", "0s")
    assert vacuum.returncode == 0, vacuum.stderr
    for uri, line in upkeep_lines(vacuum.stdout).items():
        assert f"compacted 0 files into 0, vacuumed {would[uri]} unreferenced files" in line, line
        data, _ = table_objects(client, bucket, tables[uri])
        assert len(data) == counts[uri] - would[uri] == 1 < counts[uri]
        assert set(data).isdisjoint(before[uri][0]), "the files the compaction replaced are gone"
    for after, was in zip(published(bucket, client), rows, strict=True):
        pd.testing.assert_frame_equal(after, was)


def test_maintain_keeps_what_a_sub_hour_retention_still_covers(client, seed_day):
    """--retention 30m must not vacuum files replaced a moment ago (they are younger than 30 minutes)."""
    bucket = two_days_of_concat(client, seed_day)
    assert cli("maintain", "--strategy", "concat", "--bucket", bucket).returncode == 0  # compacts
    dry = cli("maintain", "--strategy", "concat", "--bucket", bucket, "--retention", "30m", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert all(
        line.endswith("vacuumed 0 unreferenced files") for line in upkeep_lines(dry.stdout).values()
    ), dry.stdout


def test_maintain_without_tables_says_so(bucket):
    result = cli("maintain", "--strategy", "concat", "--bucket", bucket)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"concat: no tables yet under s3://{bucket}/clipfarm"
    assert cli("maintain", "--strategy", "concat").returncode == 2  # no bucket
    assert cli("maintain", "--strategy", "concat", "--bucket", bucket, "--retention", "soon").returncode == 2


def test_snapshot_manifest_writes_the_manifest_as_one_parquet_file(client, seed_day, tmp_path):
    bucket = two_days_of_concat(client, seed_day)
    expected = read_manifest("concat", bucket=bucket, client=client)
    assert len(expected) == 30

    def same_rows(table) -> None:
        assert table.schema.names == list(
            expected.columns
        )  # the manifest columns (docs/contract.md) columns, no internal ones
        order = ["video_id", "source_hash"]
        pd.testing.assert_frame_equal(
            table.to_pandas().sort_values(order, ignore_index=True),
            expected.sort_values(order, ignore_index=True),
        )

    result = cli("snapshot-manifest", "--strategy", "concat", "--bucket", bucket)
    assert result.returncode == 0, result.stderr
    written = re.fullmatch(
        rf"wrote {len(expected)} manifest rows to s3://{bucket}/(clipfarm/fused/concat/snapshots/"
        r"fused_manifest-\d{8}T\d{6}Z\.parquet)",
        result.stdout.strip(),
    )
    assert written, result.stdout
    key = written.group(1)
    assert "Contents" not in client.list_objects_v2(
        Bucket=bucket, Prefix=Layout("clipfarm").manifest_key("concat")
    )
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    same_rows(pq.read_table(pa.BufferReader(body)))

    out = tmp_path / "snap" / "concat.parquet"
    out.parent.mkdir()
    local = cli("snapshot-manifest", "--strategy", "concat", "--bucket", bucket, "--out", str(out))
    assert local.returncode == 0, local.stderr
    assert local.stdout.strip() == f"wrote {len(expected)} manifest rows to {out}"
    same_rows(pq.read_table(out))
    assert [path.name for path in out.parent.iterdir()] == ["concat.parquet"]  # no scratch file left

    # the runs go on reading and writing the table, not the snapshot
    assert len(read_manifest("concat", bucket=bucket, client=client)) == len(expected)
    assert cli("snapshot-manifest", "--strategy", "concat").returncode == 2  # no bucket
    nothing = cli("snapshot-manifest", "--strategy", "sum_pool", "--bucket", bucket)  # nothing published
    assert nothing.returncode == 2 and "does not exist" in nothing.stderr, nothing.stderr
    assert not list(
        client.list_objects_v2(Bucket=bucket, Prefix="clipfarm/fused/sum_pool/").get("Contents", [])
    )


@pytest.mark.parametrize(
    ("command", "flags"),
    [("maintain", ("--retention", "--dry-run")), ("snapshot-manifest", ("--out", "fused_manifest.parquet"))],
)
def test_help_of_the_table_commands(command, flags):
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for flag in ("--strategy", "--bucket", "--root", "Exit codes", *flags):
        assert flag in text, flag
