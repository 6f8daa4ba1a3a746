"""Faults on the wire: S3 500/503 SlowDown and dropped connections through a loopback fault proxy,
lost responses of conditional PUTs, concurrent commits to one manifest table, and two runs writing the
same strategy at once."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from bench.proxy import start_proxy
from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import ConcurrentWriteError
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.stores import manifest, s3io

from .test_crash import assert_converged
from .test_pipeline import DAY

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")
STRATEGIES = ("concat", "sum_pool", "max_pool")


def test_run_through_faulty_s3_completes_with_no_item_wrongly_failed(client, seed_day, s3_endpoint):
    seeded = seed_day(videos=80)
    proxy = start_proxy(s3_endpoint, fault_rate=0.05, drop_rate=0.01, seed=11)
    try:
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
            env={**os.environ, "AWS_ENDPOINT_URL": proxy.url},  # boto3 and delta-rs both go through it
        )
        counts = proxy.counts()
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert counts["error"] >= 10 and counts["drop"] >= 2, counts
    expected = {v: s for v, s in seeded.day.expected_status().items() if s != "invalid_video_id"}
    for strategy in STRATEGIES:
        frame = read_state(strategy, bucket=seeded.bucket, root=seeded.root, client=client)
        statuses = frame.set_index("video_id")["status"].to_dict()
        wrong = {v: (statuses.get(v), s) for v, s in expected.items() if statuses.get(v) != s}
        assert not wrong, f"{strategy}: items wrongly judged under faults (found, expected): {wrong}"
        fused = read_manifest(strategy, bucket=seeded.bucket, root=seeded.root, client=client)
        assert not fused.duplicated(["video_id", "source_hash"]).any()


@pytest.mark.s3_backends
def test_conditional_put_whose_first_attempt_landed_is_a_success(client, bucket):
    key = "clipfarm/fused/concat/schema.json"
    first = s3io.put_replacing(client, bucket, key, b"version 1", None)
    second = s3io.put_replacing(client, bucket, key, b"version 2", first)
    assert s3io.put_replacing(client, bucket, key, b"version 2", first) == second
    with pytest.raises(ConcurrentWriteError):
        s3io.put_replacing(client, bucket, key, b"version 3", first)
    assert s3io.put_if_absent(client, bucket, "k/part-0000.npz", b"shard") is not None
    assert s3io.put_if_absent(client, bucket, "k/part-0000.npz", b"shard") is not None
    assert s3io.put_if_absent(client, bucket, "k/part-0000.npz", b"other shard") is None


@pytest.mark.s3_backends
def test_replacing_an_object_deleted_since_it_was_read_writes_it_afresh(client, bucket):
    """`If-Match` on a key that is gone: AWS and moto answer 404, SeaweedFS 412. Either way nobody
    else's version is there to lose, so the write lands (no exit 4), and a second writer holding the
    same stale ETag then meets the new version and is refused."""
    key = "clipfarm/fused/concat/schema.json"
    read = s3io.put_replacing(client, bucket, key, b"version 1", None)
    client.delete_object(Bucket=bucket, Key=key)
    written = s3io.put_replacing(client, bucket, key, b"version 2", read)
    fetched = s3io.get_object(client, bucket, key)
    assert (fetched.body, fetched.etag) == (b"version 2", written)
    with pytest.raises(ConcurrentWriteError):
        s3io.put_replacing(client, bucket, key, b"version 3", read)


def rows(ids: list[str], fused_key: str) -> pa.Table:
    """Manifest rows for `ids`, one shard `fused_key`, everything else fixed."""
    n = len(ids)
    return pa.table(
        {
            "video_id": ids,
            "captured_at": ["2026-03-01T00:00:00Z"] * n,
            "source_hash": ["h"] * n,
            "fusion_strategy": ["concat"] * n,
            "fused_dim": [5] * n,
            "fused_key": [fused_key] * n,
            "shard_idx": list(range(n)),
            "shard_n": [n] * n,
            "fusion_status": ["success_full"] * n,
        }
    )


# A writer's commit can lose the race once per commit of the others: (WRITERS - 1) * COMMITS losses stay
# within manifest.COMMIT_ATTEMPTS, so every commit must land.
WRITERS, COMMITS = 4, 2
assert (WRITERS - 1) * COMMITS < manifest.COMMIT_ATTEMPTS


@pytest.mark.s3_backends
def test_concurrent_manifest_commits_from_threads_lose_no_rows(client, bucket):
    """Writers that each opened the (not yet existing) table race to create it, then keep upserting:
    a writer whose commit lost the race upserts again on the fresh table. Every writer also commits
    one key they all share: it must end up once, as the latest rule says."""
    layout = Layout("clipfarm")
    tables = [manifest.open_table(client, bucket, layout, "concat", 30) for _ in range(WRITERS)]
    assert all(t.table is None for t in tables)
    barrier = threading.Barrier(WRITERS)
    errors = []

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(COMMITS):
                own = rows([f"w{n}-{i}-a", f"w{n}-{i}-b"], f"k{n}")
                tables[n].commit(pa.concat_tables([own, rows(["shared"], f"k{n}")]) if i == 0 else own)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    table = read_manifest("concat", bucket=bucket, client=client)
    assert sorted(table["video_id"]) == sorted(
        ["shared", *(f"w{n}-{i}-{s}" for n in range(WRITERS) for i in range(COMMITS) for s in "ab")]
    )
    assert_newest_commit_wins(table, "shared", alongside=r"w\d+-0-")


def assert_newest_commit_wins(table, video_id: str, alongside: str) -> None:
    """I1: of the commits that wrote `video_id` (each also wrote rows whose ids match `alongside`), the
    newest one's row is kept: its fused_at is the newest among those rows, and the rows of its commit
    (the same fused_at) name its shard."""
    shared = table[table["video_id"] == video_id].iloc[0]
    companions = table[table["video_id"].str.match(alongside)]
    assert shared["fused_at"] == companions["fused_at"].max()
    same_commit = companions[companions["fused_at"] == shared["fused_at"]]
    assert same_commit["fused_key"].tolist() == [shared["fused_key"]] * len(same_commit)


WRITER_PROCESS = """
import sys
import pyarrow as pa
from clipfarm_fusion.stores import manifest
from clipfarm_fusion.stores import s3io
from clipfarm_fusion.core.layout import Layout
from tests.test_faults import rows

bucket, n, commits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = s3io.make_client(4)
table = manifest.open_table(client, bucket, Layout("clipfarm"), "concat", 30)
print("ready", flush=True)
sys.stdin.read()  # go: every writer opened the table before any of them commits
for i in range(commits):
    # one key of its own per commit, and one key every writer updates (the newest commit wins)
    own = rows([f"p{n}-{i}"], f"k{n}")
    shared = rows(["shared"], f"k{n}").set_column(1, "captured_at", pa.array([f"2026-03-01T00:{n:02d}:{i:02d}Z"]))
    print(table.commit(pa.concat_tables([own, shared])))
"""


def test_concurrent_manifest_commits_from_processes_lose_no_rows(client, bucket):
    layout = Layout("clipfarm")
    manifest.open_table(client, bucket, layout, "concat", 30).commit(rows(["seed"], "k-seed"))
    repo = str(Path(__file__).parent.parent)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_PROCESS, bucket, str(n), str(COMMITS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=repo,
        )
        for n in range(WRITERS)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()[-3000:]
    for process in processes:
        process.stdin.close()
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]
    table = read_manifest("concat", bucket=bucket, client=client)
    assert sorted(table["video_id"]) == sorted(
        ["seed", "shared", *(f"p{n}-{i}" for n in range(WRITERS) for i in range(COMMITS))]
    )
    assert_newest_commit_wins(table, "shared", alongside=r"p\d+-")


@pytest.mark.s3_backends
def test_two_runs_of_the_same_strategy_at_once_lose_nothing(client, seed_day, tmp_path):
    seeded = seed_day(videos=60)
    outcomes = {}
    barrier = threading.Barrier(2)

    def run(name):
        barrier.wait()
        try:
            outcomes[name] = pipeline.run(seeded.config(state_dir=tmp_path / name, shard_size=16), DAY)
        except ConcurrentWriteError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in ("machine-a", "machine-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(outcomes) == {"machine-a", "machine-b"}, "a racing run died of something else"
    lost = [n for n, o in outcomes.items() if isinstance(o, ConcurrentWriteError) or o.conflicts]
    for name in lost:  # a strategy that yielded names the other run's commit and what to do
        messages = [str(outcomes[name])] if isinstance(outcomes[name], ConcurrentWriteError) else []
        messages += list(getattr(outcomes[name], "conflicts", {}).values())
        assert all("another run" in m and "Rerun" in m for m in messages), messages
    assert len(lost) < 2, "at least one of two racing runs completes"
    for name in lost:  # the loser reruns (on its own machine) and converges; nothing was overwritten
        pipeline.run(seeded.config(state_dir=tmp_path / name, shard_size=16), DAY)
    assert_converged(client, seeded, tmp_path / "machine-a", runs=len(outcomes))
    again = pipeline.run(seeded.config(state_dir=tmp_path / "final", shard_size=16), DAY)
    for strategy in STRATEGIES:  # settled: a further run on a fresh machine has nothing to fuse
        assert again.strategies[strategy].manifest_added == again.strategies[strategy].manifest_updated == 0
    assert_converged(client, seeded, tmp_path / "final", runs=1 + len(outcomes))
