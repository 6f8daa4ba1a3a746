"""Run as users really do: twice in the same place, after the bucket was recreated, against two buckets
with one state dir, with the seed script's flags, with today's date, and reading the demo's outputs."""

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from clipfarm_fusion import read_manifest, read_state, synthetic
from clipfarm_fusion.demo import demo_bucket
from clipfarm_fusion.readback import read_vectors

from .test_cli import CLI, cli

RUN_DATE = "2026-03-01"


def delete_bucket(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def fused(summary_path) -> dict[str, int]:
    summary = json.loads(summary_path.read_text())
    return {name: s["manifest_added"] + s["manifest_updated"] for name, s in summary["strategies"].items()}


def test_a_recreated_bucket_is_fused_again_and_the_old_copy_set_aside(client, seed_day, tmp_path):
    seeded = seed_day(videos=40)
    env = {"CLIPFARM_BUCKET": seeded.bucket}
    first = cli("run", "--run-date", RUN_DATE, "--summary-json", "one.json", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    delete_bucket(client, seeded.bucket)
    client.create_bucket(Bucket=seeded.bucket)
    synthetic.seed(client, seeded.bucket, "clipfarm", seeded.day, seeded.objects)

    second = cli("run", "--run-date", RUN_DATE, "--summary-json", "two.json", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert fused(tmp_path / "two.json") == fused(tmp_path / "one.json")
    assert min(fused(tmp_path / "two.json").values()) > 0
    assert "set aside" in second.stderr and "is gone" in second.stderr
    kept = sorted(p.name for p in (tmp_path / "state").iterdir() if ".set-aside-" in p.name)
    assert len([name for name in kept if not name.endswith(".mirror.json")]) == 3  # one per strategy
    assert len(read_manifest("concat", bucket=seeded.bucket)) == fused(tmp_path / "two.json")["concat"]


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
    assert set(fused(tmp_path / "a2.json").values()) == {0}  # back on A: A's own mirror, nothing to redo
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
        result = run("demo", "--videos", "40", "--summary-json", f"demo{attempt}.json")
        assert result.returncode == 0, result.stderr
    assert "clipfarm-fusion inspect --strategy concat --from-demo clipfarm-demo" in result.stdout
    first, second = (json.loads((tmp_path / f"demo{n}.json").read_text()) for n in range(2))
    assert first["strategies"]["concat"]["counts"] == second["strategies"]["concat"]["counts"]

    full = second["strategies"]["concat"]["samples"]["success_full"][0]
    inspected = run("inspect", "--strategy", "concat", "--from-demo", "clipfarm-demo", "--video-id", full)
    assert inspected.returncode == 0, inspected.stderr
    assert f"{full}" in inspected.stdout and "#" in inspected.stdout
    exported = run("export", "--strategy", "concat", "--from-demo", "clipfarm-demo", "--out", "concat.npy")
    assert exported.returncode == 0, exported.stderr
    vectors = np.load(tmp_path / "concat.npy", allow_pickle=False)
    fused_count = sum(
        second["strategies"]["concat"]["counts"].get(s, 0)
        for s in ("success_full", "success_text_placeholder")
    )
    assert len(vectors) == fused_count

    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL",)}
    with demo_bucket(tmp_path / "clipfarm-demo") as bucket:
        ids, matrix, _ = read_vectors("concat", bucket=bucket)
        assert (
            matrix.shape == (fused_count, 2305) and len(read_manifest("concat", bucket=bucket)) == fused_count
        )
    assert {k: os.environ.get(k) for k in saved} == saved  # the private server is gone, the env restored
