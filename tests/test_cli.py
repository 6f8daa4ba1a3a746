"""`clipfarm-fusion` as a user runs it: a real process, env-configured S3, exit codes, summary JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipfarm_fusion import synthetic

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")


def cli(*args, env=None, cwd=None):
    environment = {k: v for k, v in os.environ.items() if k != "CLIPFARM_BUCKET"} | (env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=environment, cwd=cwd, timeout=300)


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


def test_single_strategy_and_flags(seed_day, tmp_path):
    seeded = seed_day(videos=20)
    meta = tmp_path / "horizon.csv"
    meta.write_bytes(seeded.day.metadata_csv)
    out = tmp_path / "s.json"
    result = cli(
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
        "--max-items",
        "5",
        "--summary-json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert list(summary["strategies"]) == ["sum_pool"]
    assert summary["strategies"]["sum_pool"]["fused_dim"] == 768
    assert (tmp_path / "st" / "fusion_sum_pool.sqlite").exists()


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


def test_demo_runs_with_no_aws_setup(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = tmp_path / "demo.json"
    result = subprocess.run(
        [CLI, "demo", "--videos", "40", "--summary-json", str(out), "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert set(summary["strategies"]) == {"concat", "sum_pool", "max_pool"}
    assert summary["strategies"]["concat"]["counts"]["success_full"] > 0
    assert "clipfarm-demo" in result.stdout
    assert list((tmp_path / "demo").rglob("fused_manifest.parquet"))


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
    assert "20 manifest rows were fused under the earlier lock" in result.stdout
    lock = json.loads(
        client.get_object(Bucket=seeded.bucket, Key="clipfarm/fused/concat/schema.json")["Body"].read()
    )
    assert (lock["audio_dim"], lock["fused_dim"]) == (1024, 2561)
    assert lock["history"][0]["fused_dim"] == 2305 and "replaced_at" in lock["history"][0]
    assert "nothing to do" in cli(*migrate).stdout

    assert cli(*run).returncode == 0
    from clipfarm_fusion import manifest, shards

    table, _ = manifest.read(client, seeded.bucket, "clipfarm/fused/concat/fused_manifest.parquet")
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
    assert {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])} == before
    assert not seeded.state_dir.exists()


def test_inspect_and_export_through_the_command_line(seed_day, tmp_path):
    import pyarrow.parquet as pq

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
