"""Crash consistency: SIGKILL `clipfarm-fusion run` at every write step and at random moments, then
rerun (same or fresh state dir) and check the result is what one uninterrupted run produces."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core import policy
from clipfarm_fusion.stores import shards

from .test_pipeline import expected_vector

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")
RUNNER = str(Path(__file__).with_name("crash_runner.py"))
STRATEGIES = ("concat", "sum_pool", "max_pool")
MIX = {
    "full": 0.6,
    "placeholder": 0.15,
    "pending_status": 0.05,
    "missing_video": 0.05,
    "corrupt_nan": 0.1,
    "odd_dim": 0.05,
}

CRASH_POINTS = [
    ("before-put", "/shards/", 1),  # before the first shard
    ("after-put", "/shards/", 1),  # right after a shard PUT
    ("before-put", "/shards/", 3),  # between shards
    ("before-put", "schema.json", 1),  # before the first lock
    ("before-commit", "/manifest", 1),  # before the first manifest commit
    ("after-commit", "/manifest", 1),  # manifest durable, state not
    ("after-commit", "/manifest", 2),  # one strategy fully committed, the next mid-way
    ("before-commit", "state/fusion_", 1),  # manifest durable, before the state commit
    ("after-commit", "state/fusion_", 1),  # one strategy's state durable, the others not
]


def run_args(seeded, state_dir):
    return [
        "run",
        "--run-date",
        "2026-03-01",
        "--bucket",
        seeded.bucket,
        "--state-dir",
        str(state_dir),
        "--shard-size",
        "8",
    ]


def assert_converged(client, seeded, state_dir, runs=2):
    """Same statuses as one run, every fused item in the manifest once, every pointer right, and
    failing items with at most one retry per run that ran them (a crash is never a failure)."""
    expected = seeded.day.expected_status()
    unsafe = {v for v, s in expected.items() if s == policy.INVALID_VIDEO_ID}
    fused = {v for v, s in expected.items() if s in policy.FUSED_STATUSES}
    for strategy in STRATEGIES:
        frame = read_state(strategy, bucket=seeded.bucket, root=seeded.root, client=client).set_index(
            "video_id"
        )
        assert frame["status"].to_dict() == {v: s for v, s in expected.items() if v not in unsafe}
        failing = frame[frame["status"] == policy.FAIL]["retry_count"]
        assert failing.between(1, runs).all(), "a crash must not count as an item failure"
        assert (frame.loc[list(fused), "retry_count"] == 0).all()
        table = read_manifest(strategy, bucket=seeded.bucket, root=seeded.root, client=client)
        keys = list(zip(table["video_id"], table["source_hash"], strict=True))
        assert len(keys) == len(set(keys)), "duplicate (video_id, source_hash) in the manifest"
        assert {v for v, _ in keys} == fused
        cache = {}
        for row in table.to_dict("records"):
            if row["fused_key"] not in cache:
                body = client.get_object(Bucket=seeded.bucket, Key=row["fused_key"])["Body"].read()
                cache[row["fused_key"]] = shards.decode(body)
            shard = cache[row["fused_key"]]
            assert shard["video_ids"][row["shard_idx"]] == row["video_id"]
            vector = expected_vector(seeded, strategy, row["video_id"])
            assert shard["vectors"][row["shard_idx"]].tobytes() == vector.tobytes()
            assert row["fusion_status"] == expected[row["video_id"]]


# Every point restarting on the same machine, and the points that leave the state behind the
# manifest restarting on a fresh machine (nothing but the bucket: --state-dir is only a cache). Every
# point runs on SeaweedFS too (s3_backends); a fresh machine's rerun makes no kind of request the others
# do not, so those run on moto only.
CASES = [pytest.param(*point, False, marks=pytest.mark.s3_backends) for point in CRASH_POINTS] + [
    pytest.param(*point, True) for point in CRASH_POINTS if point[0] == "after-commit"
]


@pytest.mark.parametrize(
    ("point", "match", "nth", "fresh_state_dir"),
    CASES,
    ids=[f"{p}:{m}:{n}:{'fresh' if f else 'same'}-state-dir" for p, m, n, f in (c.values for c in CASES)],
)
def test_sigkill_at_each_write_step_then_rerun_converges(
    client, seed_day, tmp_path, point, match, nth, fresh_state_dir
):
    seeded = seed_day(videos=40, mix=MIX)
    crashed = subprocess.run(
        [sys.executable, RUNNER, point, match, str(nth), "--", *run_args(seeded, seeded.state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == -signal.SIGKILL, (
        f"the crash point was never reached: {crashed.stderr[-2000:]}"
    )
    state_dir = tmp_path / "fresh" if fresh_state_dir else seeded.state_dir
    rerun = subprocess.run([CLI, *run_args(seeded, state_dir)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_converged(client, seeded, state_dir)


def test_sigkill_at_random_moments_under_load(client, seed_day):
    seeded = seed_day(videos=200, mix=MIX)
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        process = subprocess.Popen(
            [CLI, *run_args(seeded, seeded.state_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.8, 2.5))  # a run of this day takes 2-5 s here: most attempts are killed
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1, "every run finished before the kill; lengthen the day"
    rerun = subprocess.run(
        [CLI, *run_args(seeded, seeded.state_dir)], capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_converged(client, seeded, seeded.state_dir)
