"""Run as users really do: twice in the same place, after the bucket was recreated, against two buckets
with one state dir, with the seed script's flags, with today's date, and reading the demo's outputs."""

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core import policy
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.devtools.demo import demo_bucket
from clipfarm_fusion.read.vectors import read_vectors

from .test_cli import CLI, cli
from .test_upgrade import seed_era_state

RUN_DATE = "2026-03-01"


def delete_bucket(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def fused(summary_path) -> dict[str, int]:
    summary = json.loads(summary_path.read_text())
    return {name: s["manifest_added"] + s["manifest_updated"] for name, s in summary["strategies"].items()}


STRATEGIES = ("concat", "sum_pool", "max_pool")


def recreate(client, seeded, day: synthetic.SyntheticDay) -> None:
    """Delete the bucket and everything in it, create it again and seed `day` into it."""
    delete_bucket(client, seeded.bucket)
    client.create_bucket(Bucket=seeded.bucket)
    synthetic.seed(client, seeded.bucket, seeded.root, day, seeded.objects)


def run_day(seeded, tmp_path, summary: str):
    return cli(
        "run",
        "--run-date",
        RUN_DATE,
        "--bucket",
        seeded.bucket,
        "--state-dir",
        str(seeded.state_dir),
        "--summary-json",
        summary,
        cwd=tmp_path,
    )


def assert_published_from_scratch(client, seeded, summary_path, expected: dict[str, str]) -> None:
    """Every strategy started from empty state and fused what `expected` says, every pointer in the
    state and the manifest naming a shard this bucket holds."""
    summary = json.loads(summary_path.read_text())
    held = {
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=seeded.bucket)
        for item in page.get("Contents", [])
    }
    fused = {v for v, s in expected.items() if s in policy.FUSED_STATUSES}
    for strategy in STRATEGIES:
        assert summary["strategies"][strategy]["state_source"] == "new state table", strategy
        assert summary["strategies"][strategy]["manifest_added"] == len(fused), strategy
        frame = read_state(strategy, bucket=seeded.bucket, client=client)
        assert frame.set_index("video_id")["status"].to_dict() == expected, strategy
        assert set(frame["artifact_key"].dropna()) <= held, (
            f"{strategy}: state points at a shard of the old bucket"
        )
        rows = read_manifest(strategy, bucket=seeded.bucket, client=client)
        assert set(rows["video_id"]) == fused and not rows.duplicated(["video_id", "source_hash"]).any()
        assert set(rows["fused_key"]) <= held, strategy


def text_stage_says(day: synthetic.SyntheticDay, status: str, ids: list[str]) -> synthetic.SyntheticDay:
    """`day` with the text stage's rows of `ids` at `status`: another snapshot, another ETag."""
    connection = sqlite3.connect(":memory:")
    connection.deserialize(day.text_state_sqlite)
    connection.executemany(
        "UPDATE processed_items SET status = ? WHERE video_id = ?", [(status, v) for v in ids]
    )
    connection.commit()
    body = bytes(connection.serialize())
    connection.close()
    return dataclasses.replace(day, text_state_sqlite=body)


def expected_statuses(day: synthetic.SyntheticDay) -> dict[str, str]:
    return {v: s for v, s in day.expected_status().items() if s != policy.INVALID_VIDEO_ID}


@pytest.mark.s3_backends
def test_a_recreated_bucket_is_fused_again_from_empty_state(client, seed_day, tmp_path):
    """Nothing of the old bucket survives in --state-dir: not the state (it lives in the bucket), and not
    the cached text-stage snapshot, which the recreated bucket's text stage has replaced."""
    seeded = seed_day(videos=40)
    first = run_day(seeded, tmp_path, "one.json")
    assert first.returncode == 0, first.stderr
    assert any(seeded.state_dir.rglob("*")), "the text-stage snapshot is cached under --state-dir"
    placeholders = [v for v, case in seeded.day.cases.items() if case == "placeholder"]
    assert placeholders
    recreated = text_stage_says(seeded.day, "queued", placeholders)  # their text is on its way again
    recreate(client, seeded, recreated)

    second = run_day(seeded, tmp_path, "two.json")
    assert second.returncode == 0, second.stderr
    expected = expected_statuses(seeded.day)
    expected.update({v: policy.MISSING_TEXT_PENDING for v in placeholders})
    assert_published_from_scratch(client, seeded, tmp_path / "two.json", expected)
    assert min(fused(tmp_path / "two.json").values()) == min(fused(tmp_path / "one.json").values()) - len(
        placeholders
    )


def test_a_recreated_bucket_is_fused_again_even_by_a_machine_upgraded_from_0x(client, seed_day, tmp_path):
    """A machine that ran 0.x keeps its SQLite working copies under --state-dir (the upgrade imported the
    S3 mirror and leaves them be). They describe the old bucket: after the bucket is recreated they must
    not come back as its state, or every video counts as fused into shards that no longer exist."""
    seeded = seed_day(videos=40)
    first = run_day(seeded, tmp_path, "one.json")
    assert first.returncode == 0, first.stderr
    for strategy in STRATEGIES:  # what 0.x left on this machine: a working copy of the same state,
        body = seed_era_state(read_state(strategy, bucket=seeded.bucket, client=client))
        path = Layout.state_path(seeded.state_dir, strategy)
        path.write_bytes(body)  # with the sidecar naming the S3 mirror it was a cache of
        mirror = f"s3://{seeded.bucket}/{Layout(seeded.root).state_mirror_key(strategy)}"
        path.with_name(path.name + ".mirror.json").write_text(json.dumps({"uri": mirror, "etag": '"e"'}))
    recreate(client, seeded, seeded.day)

    second = run_day(seeded, tmp_path, "two.json")
    assert second.returncode == 0, second.stderr
    assert_published_from_scratch(client, seeded, tmp_path / "two.json", expected_statuses(seeded.day))


def test_one_state_dir_for_two_buckets_never_mixes_their_state(client, seed_day, tmp_path):
    seeded = seed_day(videos=30)
    other = f"{seeded.bucket}-b"
    synthetic.seed(client, other, "clipfarm", seeded.day, seeded.objects)
    state_dir = str(tmp_path / "shared-state")
    for bucket, out in ((seeded.bucket, "a.json"), (other, "b.json"), (seeded.bucket, "a2.json")):
        result = cli(
            "run",
            "--run-date",
            RUN_DATE,
            "--bucket",
            bucket,
            "--state-dir",
            state_dir,
            "--summary-json",
            out,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
    assert fused(tmp_path / "b.json") == fused(tmp_path / "a.json")  # bucket B fused everything it has
    assert set(fused(tmp_path / "a2.json").values()) == {0}  # back on A: A's own tables, nothing to redo
    assert set(read_state("concat", bucket=other)["video_id"]) == set(
        read_state("concat", bucket=seeded.bucket)["video_id"]
    )


def test_run_date_defaults_to_today_and_a_future_date_writes_nothing(client, seed_day, tmp_path):
    seeded = seed_day(videos=20)
    env = {"CLIPFARM_BUCKET": seeded.bucket}
    before = sorted(item["Key"] for item in client.list_objects_v2(Bucket=seeded.bucket)["Contents"])
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    refused = cli("run", "--run-date", tomorrow, env=env, cwd=tmp_path)
    assert refused.returncode == 2
    assert f"run date {tomorrow} is after today" in refused.stderr
    after = sorted(item["Key"] for item in client.list_objects_v2(Bucket=seeded.bucket)["Contents"])
    assert after == before and not (tmp_path / "state").exists()

    today = cli("run", "--strategy", "concat", "--summary-json", "s.json", env=env, cwd=tmp_path)
    assert today.returncode == 0, today.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["run_date"] == datetime.now(UTC).date().isoformat()
    assert (
        summary["strategies"]["concat"]["shards_written"][0].split("/")[-2] == f"date={summary['run_date']}"
    )


def test_the_seed_scripts_flag_spellings_and_env_still_work(client, seed_day, tmp_path):
    seeded = seed_day(videos=20, mix={"full": 0.8, "placeholder": 0.2})
    metadata = tmp_path / "horizon.csv"
    metadata.write_bytes(seeded.day.metadata_csv)
    args = [
        "run",
        "--run_date",
        RUN_DATE,
        "--fusion_strategy",
        "sum_pool",
        "--metadata_csv",
        str(metadata),
        "--max_items",
        "0",
        "--shard_size",
        "7",
        "--text_dim",
        "768",
        "--max_fail_retries",
        "2",
        "--no-append_text_presence_mask",
        "--summary_json",
        "s.json",
    ]
    result = cli(*args, env={"S3_BUCKET": seeded.bucket, "AWS_REGION": "us-east-1"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert list(summary["strategies"]) == ["sum_pool"] and summary["bucket"] == seeded.bucket
    assert summary["strategies"]["sum_pool"]["fused_dim"] == 768  # the mask is off
    assert len(summary["strategies"]["sum_pool"]["shards_written"]) == 3  # 20 videos, 7 per shard
    lock = json.loads(
        client.get_object(Bucket=seeded.bucket, Key="clipfarm/fused/sum_pool/schema.json")["Body"].read()
    )
    assert lock["mask_appended"] is False
    assert "--run_date" not in cli("run", "--help").stdout  # accepted, not advertised


def test_terminal_text_statuses_and_sample_size(seed_day, tmp_path):
    seeded = seed_day(videos=40, mix={"full": 0.5, "placeholder": 0.5})
    result = cli(
        "run",
        "--run-date",
        RUN_DATE,
        "--strategy",
        "concat",
        "--bucket",
        seeded.bucket,
        "--terminal-text-statuses",
        "fail_empty_transcript_terminal",  # no_captions is no longer terminal: those wait
        "--sample-size",
        "2",
        "--summary-json",
        "s.json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    concat = json.loads((tmp_path / "s.json").read_text())["strategies"]["concat"]
    placeholders = sum(1 for case in seeded.day.cases.values() if case == "placeholder")
    assert concat["counts"]["missing_text_pending"] == placeholders
    assert "success_text_placeholder" not in concat["counts"]
    assert all(len(ids) <= 2 for ids in concat["samples"].values())


def test_a_drifting_strategy_stops_alone_with_exit_3(client, seed_day, tmp_path):
    seeded = seed_day(videos=30, mix={"full": 1.0})
    wrong = {
        "fusion_strategy": "concat",
        "video_dim": 999,
        "audio_dim": 768,
        "text_dim": 768,
        "fused_dim": 2536,
        "mask_appended": True,
        "updated_at": "2026-01-01T00:00:00+00:00",
    }
    client.put_object(Bucket=seeded.bucket, Key="clipfarm/fused/concat/schema.json", Body=json.dumps(wrong))
    result = cli(
        "run", "--run-date", RUN_DATE, "--bucket", seeded.bucket, "--summary-json", "s.json", cwd=tmp_path
    )
    assert result.returncode == 3
    assert re.search(r"concat stopped.*video_dim=999", result.stderr)
    assert "published: sum_pool, max_pool" in result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert list(summary["strategies"]) == ["sum_pool", "max_pool"] and list(summary["stopped"]) == ["concat"]
    assert read_manifest("concat", bucket=seeded.bucket).empty
    assert not client.list_objects_v2(Bucket=seeded.bucket, Prefix="clipfarm/fused/concat/shards/").get(
        "KeyCount"
    )
    assert len(read_manifest("sum_pool", bucket=seeded.bucket)) == 30
    assert read_state("concat", bucket=seeded.bucket).empty  # no retries burnt, nothing recorded


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"AWS_PROFILE": "nope"}, "profile (nope) could not be found"),
        (("--bucket", "Bad_Bucket!"), {}, "bad bucket name 'Bad_Bucket!'"),
    ],
    ids=["unknown-profile", "bad-bucket-name"],
)
def test_aws_setup_mistakes_are_exit_2_saying_what_to_fix(seed_day, tmp_path, args, env, message):
    seeded = seed_day(videos=5)
    result = cli("run", "--run-date", RUN_DATE, *(args or ("--bucket", seeded.bucket)), env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_delta_is_one_number_everywhere_and_the_table_is_printed_once(seed_day, tmp_path):
    seeded = seed_day(videos=50)
    result = cli(
        "run",
        "--run-date",
        RUN_DATE,
        "--bucket",
        seeded.bucket,
        "--max-items",
        "30",
        "--summary-json",
        "s.json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    logged = dict(re.findall(r"(\w+)=(\d+)", re.search(r"delta: (.*);", result.stderr).group(1)))
    table = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    for position, (name, strategy) in enumerate(summary["strategies"].items()):
        assert int(logged[name]) == strategy["delta"] == int(table["delta"][position]) == 50
        accounted = sum(strategy["counts"].values()) + strategy["upgrade_checked"] + strategy["deferred"]
        assert accounted == strategy["delta"] and strategy["deferred"] > 0
    output = result.stdout + result.stderr
    assert output.count("run_date=2026-03-01 bucket=") == 1


def test_demo_twice_in_one_directory_then_read_what_it_made(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def run(*args):
        return subprocess.run(
            [CLI, *args], capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300
        )

    for attempt in range(2):
        result = run("demo", "--days", "1", "--videos", "40", "--summary-json", f"demo{attempt}.json")
        assert result.returncode == 0, result.stderr
    assert "clipfarm-fusion inspect --strategy concat --from-demo clipfarm-demo" in result.stdout
    first, second = (json.loads((tmp_path / f"demo{n}.json").read_text()) for n in range(2))
    assert [day["strategies"]["concat"]["counts"] for day in first] == [
        day["strategies"]["concat"]["counts"] for day in second
    ]

    full = second[-1]["strategies"]["concat"]["samples"]["success_full"][0]
    inspected = run("inspect", "--strategy", "concat", "--from-demo", "clipfarm-demo", "--video-id", full)
    assert inspected.returncode == 0, inspected.stderr
    assert f"{full}" in inspected.stdout and "#" in inspected.stdout
    exported = run("export", "--strategy", "concat", "--from-demo", "clipfarm-demo", "--out", "concat.npy")
    assert exported.returncode == 0, exported.stderr
    vectors = np.load(tmp_path / "concat.npy", allow_pickle=False)
    fused_count = sum(day["strategies"]["concat"]["manifest_added"] for day in second)  # one row a video
    assert len(vectors) == fused_count

    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL",)}
    with demo_bucket(tmp_path / "clipfarm-demo") as bucket:
        ids, matrix, _ = read_vectors("concat", bucket=bucket)
        assert (
            matrix.shape == (fused_count, 2305) and len(read_manifest("concat", bucket=bucket)) == fused_count
        )
    assert {k: os.environ.get(k) for k in saved} == saved  # the private server is gone, the env restored
