"""plan -> fuse chunks -> commit: however a day is cut into chunks, and in whatever processes they are
fused, what is published is what one pass publishes; staged objects never outlive their run."""

import logging
import math
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.read.vectors import read_vectors
from clipfarm_fusion.run import chunk, commit, pipeline, plan, staging
from clipfarm_fusion.stores import s3io

DAY = date(2026, 3, 1)
STRATEGIES = ("concat", "sum_pool", "max_pool")
VIDEOS = 64
LOG = logging.getLogger("test")


def published(seeded, strategy):
    """What a run published for `strategy`, without the keys that name the root or the shard."""
    where = dict(bucket=seeded.bucket, root=seeded.root)
    state = read_state(strategy, **where).set_index("video_id").sort_index()
    rows = read_manifest(strategy, **where).sort_values(["video_id", "source_hash"]).reset_index(drop=True)
    ids, vectors, _ = read_vectors(strategy, sorted(rows["video_id"]), **where)
    return (
        state[["source_hash", "status", "retry_count"]],
        rows[["video_id", "source_hash", "captured_at", "fused_dim", "text_present", "fusion_status"]],
        dict(zip(ids, vectors, strict=True)),
    )


def staged_objects(client, seeded) -> list[str]:
    listing = client.list_objects_v2(Bucket=seeded.bucket, Prefix=Layout(seeded.root).staging_prefix())
    return [entry["Key"] for entry in listing.get("Contents", [])]


def assert_same(left, right):
    for a, b in zip(left[:2], right[:2], strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert left[2].keys() == right[2].keys()
    for video_id, vector in left[2].items():
        assert vector.tobytes() == right[2][video_id].tobytes(), video_id  # bit for bit


def run_twice(seeded, **options):
    """The day twice: the failures fail again (retry counts 2), the rest is settled."""
    config = seeded.config(strategies=STRATEGIES, **options)
    summaries = [pipeline.run(config, DAY) for _ in range(2)]
    return summaries


def test_any_split_publishes_what_one_chunk_publishes(client, seed_day):
    one = seed_day(videos=VIDEOS, root="one")
    reference = run_twice(one, chunk_size=10_000)
    assert reference[0].strategies["concat"].delta > 50
    work = reference[0].strategies["concat"].delta
    for chunks in (2, 4, 8):
        split = seed_day(videos=VIDEOS, root=f"split{chunks}")
        summaries = run_twice(split, chunk_size=math.ceil(work / chunks), shard_size=4)
        for name in STRATEGIES:
            assert_same(published(one, name), published(split, name))
            for ours, theirs in zip(summaries, reference, strict=True):
                assert ours.strategies[name].counts == theirs.strategies[name].counts
                assert ours.strategies[name].samples == theirs.strategies[name].samples
        assert staged_objects(client, split) == []
    state = published(one, "concat")[0]
    assert state["retry_count"].max() == 2  # the failures failed twice


def test_workers_fuse_the_chunks_in_processes_with_the_same_result(client, seed_day):
    """`run --workers 2` through the CLI (spawned processes) equals `--workers 1`."""
    outcomes = []
    for workers in (1, 2):
        seeded = seed_day(videos=40, root=f"workers{workers}")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "clipfarm_fusion.cli.main",
                "run",
                "--bucket",
                seeded.bucket,
                "--root",
                seeded.root,
                "--run-date",
                DAY.isoformat(),
                "--strategy",
                "all",
                "--state-dir",
                str(seeded.state_dir),
                "--chunk-size",
                "9",
                "--workers",
                str(workers),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes.append([published(seeded, name) for name in STRATEGIES])
        if workers == 2:
            assert "chunk 4 done" in done.stderr or "5/5 chunks" in done.stderr, done.stderr[-2000:]
    for left, right in zip(*outcomes, strict=True):
        assert_same(left, right)


def test_a_failed_chunk_fused_again_converges(client, seed_day, monkeypatch, caplog):
    """A fuse step that dies after writing a shard is retried alone: its first attempt's shard is an
    orphan, the commit publishes the retry's rows, and the result is a clean run's."""
    clean = seed_day(videos=40, root="clean")
    pipeline.run(clean.config(strategies=("concat",), chunk_size=15, shard_size=5), DAY)
    seeded = seed_day(videos=40, root="retried")
    config = seeded.config(strategies=("concat",), chunk_size=15, shard_size=5)
    planned = plan.plan(config, DAY, client, LOG)
    assert planned.chunks == 3
    original = chunk.ShardWriter.write
    calls = []

    def dies_on_second_shard(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionResetError("the worker died")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(chunk.ShardWriter, "write", dies_on_second_shard)
    with pytest.raises(ConnectionResetError):
        chunk.fuse_chunk(config, planned, 1, client)
    monkeypatch.setattr(chunk.ShardWriter, "write", original)
    results = [chunk.fuse_chunk(config, planned, index, client) for index in (2, 1, 0)]  # any order
    summary = commit.commit(config, planned, results, client)
    assert summary.strategies["concat"].fused > 0
    assert_same(published(clean, "concat"), published(seeded, "concat"))
    assert staged_objects(client, seeded) == []


@pytest.mark.s3_backends
def test_two_plans_of_one_day_cannot_both_commit_and_a_conflict_stops_only_its_strategy(client, seed_day):
    """The second plan's concat videos were committed by the first run after it planned: concat yields
    (named in `conflicts`, its shards withdrawn, nothing of it published), while its sum_pool, which the
    first run did not touch, publishes."""
    seeded = seed_day(videos=30)
    first_config = seeded.config(strategies=("concat",), chunk_size=10)
    both = seeded.config(strategies=("concat", "sum_pool"), chunk_size=10)
    first, second = plan.plan(first_config, DAY, client, LOG), plan.plan(both, DAY, client, LOG)
    assert first.run_id != second.run_id
    first_results = [chunk.fuse_chunk(first_config, first, i, client) for i in range(first.chunks)]
    second_results = [chunk.fuse_chunk(both, second, i, client) for i in range(second.chunks)]
    commit.commit(first_config, first, first_results, client)
    published = read_manifest("concat", bucket=seeded.bucket, client=client)
    summary = commit.commit(both, second, second_results, client)
    assert list(summary.conflicts) == ["concat"] and "committed by another run" in summary.conflicts["concat"]
    assert list(summary.strategies) == ["sum_pool"] and summary.strategies["sum_pool"].fused > 0
    assert read_manifest("concat", bucket=seeded.bucket, client=client).equals(published)
    assert staged_objects(client, seeded) == []  # a plan that can never commit leaves nothing behind
    listed = set(s3io.list_keys(client, seeded.bucket, f"{seeded.root}/fused/concat/shards/"))
    assert listed == set(published["fused_key"])  # the loser's concat shards were withdrawn
    rerun = pipeline.run(first_config, DAY)
    assert rerun.strategies["concat"].counts.get("success_full", 0) == 0  # the first commit stands


def test_stale_staged_objects_are_swept_and_fresh_ones_kept(client, seed_day):
    seeded = seed_day(videos=20)
    config = seeded.config(strategies=("concat",), chunk_size=5)
    abandoned = plan.plan(config, DAY, client, LOG)  # never fused or committed
    left = staged_objects(client, seeded)
    assert (
        len(left) == abandoned.chunks + abandoned.refreshing
    )  # the chunks' inputs (and the plan's own object)
    layout = Layout(seeded.root)
    assert staging.sweep(client, seeded.bucket, layout) == 0  # a day's grace: it may still be running
    later = datetime.now(UTC) + staging.STALE_AFTER + timedelta(minutes=1)
    assert staging.sweep(client, seeded.bucket, layout, now=later) == len(left)
    assert staged_objects(client, seeded) == []


def test_a_plan_with_max_items_is_one_chunk(client, seed_day):
    seeded = seed_day(videos=30)
    config = seeded.config(strategies=("concat",), chunk_size=5, max_items=7)
    planned = plan.plan(config, DAY, client, LOG)
    assert planned.chunks == 1 and planned.chunk_size == planned.work
    results = [chunk.fuse_chunk(config, planned, 0, client)]
    summary = commit.commit(config, planned, results, client)
    assert results[0].reads == 7
    assert summary.strategies["concat"].deferred > 0
    assert (
        np.sum(list(summary.strategies["concat"].counts.values()))
        + summary.strategies["concat"].upgrade_checked
        + summary.strategies["concat"].deferred
        == summary.strategies["concat"].delta
    )


def test_a_later_chunk_with_other_dims_on_a_first_run_fails_as_in_one_pass(client, seed_day):
    """No lock yet, and the day's last 15 videos come from another upstream model: one pass locks the first
    batch's dims and fails the rest; split in two, the second chunk (all of the other model) fused with its
    own dims, and the commit fails its items against the day's, withdrawing its shards: the same result."""
    seeded = seed_day(videos=40, mix={"full": 1.0})
    ids = sorted(seeded.day.cases)
    later = ids[25:]
    for video_id in later:  # 16-d video embeddings instead of 768-d
        key = Layout(seeded.root).embedding_key("video", video_id)
        client.put_object(Bucket=seeded.bucket, Key=key, Body=synthetic.npy_bytes(np.ones(16, np.float32)))
    split = pipeline.run(seeded.config(strategies=("concat",), chunk_size=25), DAY).strategies["concat"]
    assert split.counts == {"success_full": 25, "fail": 15} and split.deferred == 0
    assert len(split.shards_written) == 1  # the second chunk's shard was withdrawn
    assert staged_objects(client, seeded) == []
    state = read_state("concat", bucket=seeded.bucket, root=seeded.root).set_index("video_id")
    assert state.loc[later[0], "error"] == "video embedding: 16-d, expected 768-d (this run's majority)"
    assert state.loc[later, "retry_count"].tolist() == [1] * 15
    assert sorted(read_manifest("concat", bucket=seeded.bucket, root=seeded.root)["video_id"]) == ids[:25]
    listing = client.list_objects_v2(
        Bucket=seeded.bucket, Prefix=Layout(seeded.root).strategy_prefix("concat")
    )
    assert [k["Key"] for k in listing["Contents"] if k["Key"].endswith(".npz")] == split.shards_written

    one = seed_day(videos=40, mix={"full": 1.0}, root="one")
    for video_id in later:
        key = Layout(one.root).embedding_key("video", video_id)
        client.put_object(Bucket=one.bucket, Key=key, Body=synthetic.npy_bytes(np.ones(16, np.float32)))
    whole = pipeline.run(one.config(strategies=("concat",)), DAY).strategies["concat"]
    assert whole.counts == split.counts
    assert_same(published(one, "concat"), published(seeded, "concat"))


def test_chunks_aligned_on_batches_cost_four_requests_each(client, seed_day):
    """Cut on batch boundaries (chunk_size a multiple of shard_size), a day makes exactly the requests one
    pass makes plus, per additional chunk, the staged objects: the plan's PUT of its input, the chunk's GET
    of it and PUT of its output, the commit's GET of the output (their deletes are one batch)."""
    counts = []
    for chunks, root in ((1, "whole"), (4, "cut")):
        seeded = seed_day(videos=64, root=root)
        calls: Counter = Counter()

        def count(model, calls=calls, **_):
            calls.update([model.name])

        client.meta.events.register("before-call.s3.*", count)
        config = seeded.config(strategies=("concat",), shard_size=8, chunk_size=64 // chunks)
        pipeline.run(config, DAY, client=client)
        client.meta.events.unregister("before-call.s3.*", count)
        counts.append(calls)
    whole, cut = counts
    extra = cut - whole
    assert extra == Counter({"PutObject": 2 * 3, "GetObject": 2 * 3}), (whole, cut)
    assert whole - cut == Counter()


def test_a_rerun_with_nothing_to_do_stages_nothing(client, seed_day):
    """No delta, no chunk, no refreshed cursors: no object is written, not even a staged one."""
    seeded = seed_day(videos=20, mix={"full": 1.0})
    config = seeded.config(strategies=("concat",))
    pipeline.run(config, DAY, client=client)
    calls: Counter = Counter()

    def count(model, **_):
        calls.update([model.name])

    client.meta.events.register("before-call.s3.*", count)
    rerun = pipeline.run(config, DAY, client=client)
    client.meta.events.unregister("before-call.s3.*", count)
    assert rerun.strategies["concat"].delta == 0
    assert calls["PutObject"] == calls["DeleteObjects"] == 0, calls
