"""Faults on the wire: S3 500/503 SlowDown and dropped connections through a loopback fault proxy,
lost responses of conditional PUTs, and two runs writing the same strategy at once."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.proxy import start_proxy
from clipfarm_fusion import manifest, pipeline, policy, s3io, state
from clipfarm_fusion.errors import ConcurrentWriteError
from clipfarm_fusion.layout import Layout

from .test_crash import assert_converged
from .test_pipeline import DAY

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")


def test_run_through_faulty_s3_completes_with_no_item_wrongly_failed(seed_day, s3_endpoint, monkeypatch):
    seeded = seed_day(videos=80)
    proxy = start_proxy(s3_endpoint, fault_rate=0.05, drop_rate=0.01, seed=11)
    try:
        env = {"AWS_ENDPOINT_URL": proxy.url}
        result = subprocess.run(
            [
                CLI,
                "run",
                "--run-date",
                "2026-03-01",
                "--bucket",
                seeded.bucket,
                "--state-dir",
                str(seeded.state_dir),
                "--shard-size",
                "16",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**__import__("os").environ, **env},
        )
        counts = proxy.counts()
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert counts["error"] >= 10 and counts["drop"] >= 2, counts
    expected = seeded.day.expected_status()
    for strategy in ("concat", "sum_pool", "max_pool"):
        frame = state.StateDB(Layout.state_path(seeded.state_dir, strategy)).read_all()
        wrong = {v: (s, expected[v]) for v, s in frame["status"].items() if s != expected[v]}
        assert not wrong, f"{strategy}: items wrongly judged under faults: {wrong}"


def test_conditional_put_whose_first_attempt_landed_is_a_success(client, bucket):
    key = "clipfarm/state/fusion_concat.sqlite"
    first = s3io.put_replacing(client, bucket, key, b"version 1", None)
    second = s3io.put_replacing(client, bucket, key, b"version 2", first)
    assert s3io.put_replacing(client, bucket, key, b"version 2", first) == second
    with pytest.raises(ConcurrentWriteError):
        s3io.put_replacing(client, bucket, key, b"version 3", first)
    assert s3io.put_if_absent(client, bucket, "k/part-0000.npz", b"shard") is not None
    assert s3io.put_if_absent(client, bucket, "k/part-0000.npz", b"shard") is not None
    assert s3io.put_if_absent(client, bucket, "k/part-0000.npz", b"other shard") is None


def test_concurrent_manifest_commits_lose_no_rows(client, bucket):
    from .test_storage import manifest_rows

    key = "clipfarm/fused/concat/fused_manifest.parquet"
    errors = []

    def writer(n):
        try:
            for i in range(4):
                manifest.commit(client, bucket, key, manifest_rows([f"w{n}-{i}"], ["h"], f"k{n}"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    table, _ = manifest.read(client, bucket, key)
    assert sorted(table["video_id"].to_pylist()) == sorted(f"w{n}-{i}" for n in range(4) for i in range(4))


def test_two_runs_of_the_same_strategy_at_once_lose_nothing(client, seed_day, tmp_path):
    seeded = seed_day(videos=60)
    outcomes = {}

    def run(name):
        try:
            outcomes[name] = pipeline.run(seeded.config(state_dir=tmp_path / name, shard_size=16), DAY)
        except ConcurrentWriteError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in ("machine-a", "machine-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lost = [n for n, o in outcomes.items() if isinstance(o, ConcurrentWriteError)]
    for name in lost:
        assert "another run" in str(outcomes[name])
    winner = next((n for n in outcomes if n not in lost), None)
    assert winner is not None, "at least one of two racing runs completes"
    for name in lost:  # the loser reruns and converges; nothing was overwritten
        pipeline.run(seeded.config(state_dir=tmp_path / name, shard_size=16), DAY)
    for name in outcomes:
        frame = state.StateDB(Layout.state_path(tmp_path / name, "concat")).read_all()
        fused = frame[frame["status"].isin(policy.FUSED_STATUSES)]
        assert len(fused) == sum(s in policy.FUSED_STATUSES for s in seeded.day.expected_status().values())
    final = tmp_path / "final"
    pipeline.run(seeded.config(state_dir=final, shard_size=16), DAY)
    assert_converged(client, seeded, final, runs=1 + len(outcomes))
