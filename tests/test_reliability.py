"""Faults are not failures: outages never cost an item its retries, a broken store is never silently
reset, the backlog is never starved. Written against behaviour (exit codes, the public readers, what
gets fused), so it holds whatever store keeps the state."""

import io
import json
import os
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest

from bench.proxy import start_proxy
from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core import policy
from clipfarm_fusion.core.layout import Layout

from .test_cli import cli
from .test_crash import RUNNER, assert_converged

RUN_DATE = "2026-03-01"


def listing(client, bucket: str) -> dict[str, str]:
    return {
        item["Key"]: item["ETag"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    }


def run_args(seeded, *extra, strategy="concat", summary="s.json") -> list[str]:
    """`run` for the day; strategy None: every default strategy."""
    return [
        "run",
        "--run-date",
        RUN_DATE,
        "--bucket",
        seeded.bucket,
        *(("--strategy", strategy) if strategy else ()),
        "--state-dir",
        str(seeded.state_dir),
        "--summary-json",
        summary,
        *extra,
    ]


def run(seeded, tmp_path, *extra, endpoint=None, strategy="concat", summary="s.json"):
    env = {"AWS_ENDPOINT_URL": endpoint} if endpoint else {}
    return cli(*run_args(seeded, *extra, strategy=strategy, summary=summary), env=env, cwd=tmp_path)


def expected_with_no_retries(seeded) -> dict[str, str]:
    """What one run with --max-fail-retries 0 should leave: broken files are terminal at once, and
    nothing else ever fails."""
    return {
        v: policy.FAIL_TERMINAL if s == policy.FAIL else s
        for v, s in seeded.day.expected_status().items()
        if s != policy.INVALID_VIDEO_ID
    }


def expected_fused(seeded) -> set[str]:
    return {v for v, s in seeded.day.expected_status().items() if s in policy.FUSED_STATUSES}


def test_a_short_outage_is_ridden_out_and_fails_no_item(seed_day, s3_endpoint, tmp_path):
    seeded = seed_day(videos=60)
    proxy = start_proxy(s3_endpoint)
    proxy.outage(3.0, after=20, kinds=("GET", "LIST"), mode="drop")
    try:
        result = run(seeded, tmp_path, "--max-fail-retries", "0", "--shard-size", "16", endpoint=proxy.url)
        counts = proxy.counts()
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    assert counts["outage"] >= 5, counts
    states = read_state("concat", bucket=seeded.bucket).set_index("video_id")["status"].to_dict()
    assert states == expected_with_no_retries(seeded)
    assert set(read_manifest("concat", bucket=seeded.bucket)["video_id"]) == expected_fused(seeded)


def test_a_long_outage_stops_with_exit_6_burning_no_retries(client, seed_day, s3_endpoint, tmp_path):
    seeded = seed_day(videos=60)
    assert run(seeded, tmp_path, "--max-fail-retries", "0", summary="first.json").returncode == 0
    metadata = seeded.day.metadata_csv.decode().replace("/shorts/", "/shorts/v2/")  # every video changed
    client.put_object(
        Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=metadata.encode()
    )
    state_before, objects_before = read_state("concat", bucket=seeded.bucket), listing(client, seeded.bucket)
    assert len(state_before) == len(expected_with_no_retries(seeded))

    proxy = start_proxy(s3_endpoint)
    proxy.outage(120.0, after=8, kinds=("GET", "LIST"), mode="error")
    try:
        result = run(seeded, tmp_path, "--max-fail-retries", "0", "--s3-patience", "2", endpoint=proxy.url)
    finally:
        proxy.stop()
    assert result.returncode == 6, result.stderr[-2000:]
    assert "S3 unavailable" in result.stderr and "retry later" in result.stderr
    assert "Traceback" not in result.stderr
    assert read_state("concat", bucket=seeded.bucket).equals(state_before)  # no retry burnt, nothing new
    after = listing(client, seeded.bucket)  # no table commit either: only unreferenced shards, if any
    assert {k: v for k, v in after.items() if "/shards/" not in k} == {
        k: v for k, v in objects_before.items() if "/shards/" not in k
    }

    healed = run(seeded, tmp_path, "--max-fail-retries", "0", summary="healed.json")
    assert healed.returncode == 0, healed.stderr[-2000:]
    states = read_state("concat", bucket=seeded.bucket).set_index("video_id")["status"].to_dict()
    expected = {  # the text stage's rows are for the old URLs now: its no-captions verdicts no longer apply
        v: policy.MISSING_TEXT_PENDING if s == policy.SUCCESS_PLACEHOLDER else s
        for v, s in expected_with_no_retries(seeded).items()
    }
    assert states == expected  # good videos fused, never failed


def run_paused_before_commit(seeded, tmp_path, match: str, at_pause, *extra, endpoint: str):
    """`run` (every strategy) through crash_runner, paused before the first commit of a table whose
    location holds `match`: `at_pause()` runs there (this process), then the run goes on. Returns
    (exit code, stderr, whether the pause was reached)."""
    process = subprocess.Popen(
        [
            sys.executable,
            RUNNER,
            "pause-before-commit",
            match,
            "1",
            "--",
            *run_args(seeded, *extra, strategy=None, summary="paused.json"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "AWS_ENDPOINT_URL": endpoint},
    )
    lines, paused = [], False
    for line in process.stderr:  # the run logs to stderr; the runner says when it pauses
        lines.append(line)
        if line.startswith("crash_runner: paused"):
            paused = True
            at_pause()
            process.stdin.write("go\n")
            process.stdin.flush()
    process.stdin.close()
    return process.wait(timeout=300), "".join(lines), paused


@pytest.mark.parametrize("first_run", [True, False], ids=["state-table-create", "state-table-upsert"])
def test_an_outage_at_the_state_commit_leaves_the_state_table_as_it_was_and_a_rerun_converges(
    client, seed_day, s3_endpoint, tmp_path, first_run
):
    """S3 becomes unreachable right after concat's manifest commit, before its state commit (the
    table's creation on a first run, an upsert later): exit 6, the state as it was, and a rerun converges."""
    seeded = seed_day(videos=40)
    if not first_run:  # a state table to keep as it was, and work left for the next run
        assert run(seeded, tmp_path, "--max-items", "15", strategy=None, summary="first.json").returncode == 0
    state_before = {s: read_state(s, bucket=seeded.bucket) for s in ("concat", "sum_pool", "max_pool")}
    manifest_before = read_manifest("concat", bucket=seeded.bucket)
    proxy = start_proxy(s3_endpoint)
    try:
        code, stderr, paused = run_paused_before_commit(
            seeded,
            tmp_path,
            "state/fusion_concat",
            lambda: proxy.outage(600.0, after=0, mode="drop"),  # every request from now on
            "--s3-patience",
            "1",
            endpoint=proxy.url,
        )
        counts = proxy.counts()
    finally:
        proxy.stop()
    assert paused, f"the state commit was never reached: {stderr[-2000:]}"
    assert code == 6, stderr[-2000:]
    assert counts["outage"] >= 1, counts
    assert "S3 unavailable" in stderr and "Traceback" not in stderr
    manifest_after = read_manifest("concat", bucket=seeded.bucket)
    assert len(manifest_after) > len(manifest_before), "the manifest commit landed before the outage"
    for strategy, before in state_before.items():
        assert read_state(strategy, bucket=seeded.bucket).equals(before), strategy

    rerun = cli(*run_args(seeded, strategy=None, summary="again.json"), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_converged(client, seeded, seeded.state_dir, runs=2)


def test_an_outage_during_the_embedding_list_is_exit_6_not_a_traceback(seed_day, s3_endpoint, tmp_path):
    seeded = seed_day(videos=40)
    proxy = start_proxy(s3_endpoint)
    proxy.outage(120.0, after=0, kinds=("LIST",), mode="drop")
    try:
        result = run(seeded, tmp_path, "--s3-patience", "1", endpoint=proxy.url)
    finally:
        proxy.stop()
    assert result.returncode == 6, result.stderr[-2000:]
    assert (
        "Traceback" not in result.stderr
        and "S3 unavailable" in result.stderr
        and "list-type" in result.stderr
    )


def test_max_items_caps_what_can_progress_so_waiting_items_never_starve_the_backlog(
    client, seed_day, tmp_path
):
    seeded = seed_day(videos=90, mix={"pending_status": 1 / 3, "full": 2 / 3})  # 30 waiting ids sort first
    fused_per_run = []
    for attempt in range(3):
        result = run(seeded, tmp_path, "--max-items", "40", summary=f"{attempt}.json")
        assert result.returncode == 0, result.stderr[-2000:]
        concat = json.loads((tmp_path / f"{attempt}.json").read_text())["strategies"]["concat"]
        fused_per_run.append(concat["counts"].get(policy.SUCCESS_FULL, 0))
        assert concat["counts"][policy.MISSING_TEXT_PENDING] == 30  # judged every run, never counted
        accounted = sum(concat["counts"].values()) + concat["upgrade_checked"] + concat["deferred"]
        assert accounted == concat["delta"]
    assert fused_per_run == [40, 20, 0]
    first = json.loads((tmp_path / "0.json").read_text())["strategies"]["concat"]
    assert first["delta"] == 90 and first["deferred"] == 20
    assert len(read_manifest("concat", bucket=seeded.bucket)) == 60


def corrupt_sqlite(tmp_path) -> bytes:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE something_else (x TEXT)")
    return other.read_bytes()


@pytest.mark.parametrize("kind", ["random-bytes", "empty", "another-table"])
def test_a_corrupt_seed_era_state_file_stops_with_exit_7_before_anything_is_written(
    client, seed_day, tmp_path, kind
):
    seeded = seed_day(videos=30)
    body = {"random-bytes": os.urandom(4096), "empty": b"", "another-table": corrupt_sqlite(tmp_path)}[kind]
    key = Layout(seeded.root).state_mirror_key("concat")
    client.put_object(Bucket=seeded.bucket, Key=key, Body=body)
    objects_before = listing(client, seeded.bucket)
    result = run(seeded, tmp_path, strategy=None)
    assert result.returncode == 7, result.stderr[-2000:]
    assert f"s3://{seeded.bucket}/{key}" in result.stderr and "Restore it" in result.stderr
    assert "Traceback" not in result.stderr
    assert listing(client, seeded.bucket) == objects_before  # no shard, no table, nothing reset

    client.delete_object(Bucket=seeded.bucket, Key=key)  # "or delete it on purpose to start over"
    assert run(seeded, tmp_path, strategy=None, summary="over.json").returncode == 0
    assert set(read_state("concat", bucket=seeded.bucket)["video_id"]) == set(
        expected_with_no_retries(seeded)
    )


@pytest.mark.parametrize(
    ("key", "body"),
    [
        ("clipfarm/fused/concat/fused_manifest.parquet", b"PAR1 this is not parquet PAR1"),
        ("clipfarm/fused/concat/fused_manifest.parquet", b""),
        ("clipfarm/fused/concat/schema.json", b"{not json"),
    ],
    ids=["garbage-seed-era-manifest", "empty-seed-era-manifest", "garbage-lock"],
)
def test_an_unreadable_manifest_or_lock_stops_before_the_first_shard(client, seed_day, tmp_path, key, body):
    """A seed-era manifest file is read only while there is no manifest table (to import it), so it is
    planted in a bucket no run has written yet; the lock is read by every run."""
    seeded = seed_day(videos=30)
    if key.endswith("schema.json"):
        assert run(seeded, tmp_path, strategy=None).returncode == 0
        metadata = seeded.day.metadata_csv.decode().replace("/shorts/", "/shorts/v2/")  # work to do
        client.put_object(
            Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=metadata.encode()
        )
    client.put_object(Bucket=seeded.bucket, Key=key, Body=body)
    objects_before = listing(client, seeded.bucket)
    result = run(seeded, tmp_path, strategy=None, summary="again.json")  # concat first, then the others
    assert result.returncode == 7, result.stderr[-2000:]
    assert (
        key in result.stderr and "nothing was written" in result.stderr and "Traceback" not in result.stderr
    )
    assert listing(client, seeded.bucket) == objects_before  # no orphan shard, no table either


@pytest.mark.parametrize("body", [b"", os.urandom(2048)], ids=["empty", "random-bytes"])
def test_an_unreadable_text_stage_snapshot_is_unavailable_not_a_crash(client, seed_day, tmp_path, body):
    seeded = seed_day(videos=40)
    client.put_object(Bucket=seeded.bucket, Key="clipfarm/state/text_downloader.sqlite", Body=body)
    result = run(seeded, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["text_state"].startswith("text state s3://") and "unavailable" in summary["text_state"]
    counts = summary["strategies"]["concat"]["counts"]
    assert counts[policy.MISSING_TEXT_UNAVAILABLE] > 0 and counts[policy.SUCCESS_FULL] > 0


def test_captured_at_that_is_not_iso_is_counted_and_refused_under_strict_dates(client, seed_day, tmp_path):
    seeded = seed_day(videos=30, mix={"full": 1.0})
    frame = pd.read_csv(io.BytesIO(seeded.day.metadata_csv), dtype=str, keep_default_na=False)
    frame.loc[frame["video_id"].isin(["vid000001", "vid000002"]), "captured_at"] = "03/10/2026 10:00"
    client.put_object(
        Bucket=seeded.bucket,
        Key="clipfarm/metadata/shorts_metadata_horizon.csv",
        Body=frame.to_csv(index=False).encode(),
    )
    counted = run(seeded, tmp_path)
    assert counted.returncode == 0, counted.stderr[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["unparseable_dates"] == 2
    assert all("03/10/2026 10:00" in sample for sample in summary["unparseable_date_samples"])
    assert "not ISO 8601" in counted.stderr and "captured_at not ISO 8601" in counted.stdout

    objects_before = listing(client, seeded.bucket)
    refused = run(seeded, tmp_path, "--strict-dates", summary="strict.json")
    assert refused.returncode == 2
    assert "2 captured_at values are not ISO 8601" in refused.stderr and "--strict-dates" in refused.stderr
    assert listing(client, seeded.bucket) == objects_before
