"""The whole job through `pipeline.run()` against a moto server over HTTP and real SQLite files."""

import json
import re
import sqlite3
from datetime import date

import numpy as np
import pandas as pd
import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core import policy
from clipfarm_fusion.core.kernels import FusionOptions, fuse
from clipfarm_fusion.core.npy import decode_vector
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import tables
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.stores import manifest, shards, state_schema

DAY = date(2026, 3, 1)
STRATEGIES = ("concat", "sum_pool", "max_pool")
MANIFEST_COLUMNS = [
    "video_id",
    "captured_at",
    "source_hash",
    "fusion_strategy",
    "fused_dim",
    "fused_key",
    "shard_idx",
    "shard_n",
    "video_emb_key",
    "audio_emb_key",
    "text_emb_key",
    "text_present",
    "text_source",
    "text_state_status",
    "text_missing_reason",
    "fusion_status",
    "retry_count_at_write",
    "fused_at",
    "video_etag",
    "audio_etag",
    "text_etag",
    "video_version_id",
    "audio_version_id",
    "text_version_id",
    "lock_id",
]


def statuses(seeded, strategy):
    """The published state of `strategy`, indexed by video_id."""
    return read_state(strategy, bucket=seeded.bucket, root=seeded.root).set_index("video_id")


def snapshot(client, bucket):
    """Every key and its ETag: equal snapshots mean nothing was written."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def expected_vector(seeded, strategy, video_id, options=None):
    def load(modality):
        body = seeded.objects.get(f"embeddings/{modality}/{video_id}.npy")
        return None if body is None else decode_vector(body, video_id, modality)

    video, audio, text = load("video"), load("audio"), load("text")
    present = text is not None
    text = text if present else np.zeros(768, np.float32)
    return fuse(
        strategy, video[None], audio[None], text[None], np.array([present]), options or FusionOptions()
    )[0]


def manifest_table(client, seeded, strategy):
    return tables.manifest_table(client, seeded.bucket, seeded.root, strategy)


def assert_every_pointer_resolves(client, seeded, strategy):
    table = manifest_table(client, seeded, strategy)
    cache = {}
    for row in table.to_pylist():
        key = row["fused_key"]
        if key not in cache:
            cache[key] = shards.decode(client.get_object(Bucket=seeded.bucket, Key=key)["Body"].read())
        shard = cache[key]
        assert shard["video_ids"][row["shard_idx"]] == row["video_id"]
        assert len(shard["video_ids"]) == row["shard_n"]
        got = shard["vectors"][row["shard_idx"]]
        assert got.tobytes() == expected_vector(seeded, strategy, row["video_id"]).tobytes()
    return table


def test_every_gating_case_gets_its_status_in_all_strategies(client, seed_day):
    seeded = seed_day(videos=120)
    summary = pipeline.run(seeded.config(shard_size=40), DAY)
    expected = seeded.day.expected_status()
    unsafe = {v for v, c in seeded.day.cases.items() if c == "unsafe_id"}
    for strategy in STRATEGIES:
        frame = statuses(seeded, strategy)
        assert frame["status"].to_dict() == {v: s for v, s in expected.items() if v not in unsafe}
        counts = summary.strategies[strategy].counts
        assert counts == pd.Series(expected).value_counts().to_dict()
        failed = frame[frame["status"] == policy.FAIL]
        assert (failed["retry_count"] == 1).all()
        assert failed["error"].str.contains("embedding: ").all()
        missing = frame[frame["status"] == policy.MISSING_REQUIRED]
        assert missing["error"].str.contains("embedding missing").all()
        table = assert_every_pointer_resolves(client, seeded, strategy)
        assert table.column_names == MANIFEST_COLUMNS
        fused = {v for v, s in expected.items() if s in policy.FUSED_STATUSES}
        assert set(table["video_id"].to_pylist()) == fused
        assert summary.strategies[strategy].manifest_added == len(fused)
        assert len(summary.strategies[strategy].shards_written) == 3
    assert summary.strategies["concat"].fused_dim == 2305
    assert summary.strategies["sum_pool"].fused_dim == summary.strategies["max_pool"].fused_dim == 769


def test_manifest_values_are_the_seed_scripts_spellings(client, seed_day):
    """text_emb_key is always the text key; text_missing_reason is terminal_text_status:<status> for
    placeholders and empty for full rows (training filters written against the seed depend on these)."""
    seeded = seed_day(videos=40)
    pipeline.run(seeded.config(strategies=("concat",)), DAY)
    rows = read_manifest("concat", bucket=seeded.bucket).set_index("video_id")
    placeholder = [v for v, c in seeded.day.cases.items() if c == "placeholder"]
    full = rows.index[rows["text_present"] == 1]
    assert len(full) and len(placeholder)
    assert (rows.loc[placeholder, "text_source"] == "placeholder").all()
    assert (rows.loc[placeholder, "text_present"] == 0).all()
    assert (rows["text_emb_key"] == [f"clipfarm/embeddings/text/{v}.npy" for v in rows.index]).all()
    assert (rows.loc[placeholder, "text_missing_reason"] == "terminal_text_status:no_captions").all()
    assert (rows.loc[full, "text_missing_reason"] == "").all()
    assert rows["text_state_status"].notna().all()


def test_rerun_with_nothing_new_writes_no_shard_and_keeps_manifest_rows(client, seed_day):
    seeded = seed_day(videos=60)
    pipeline.run(seeded.config(), DAY)
    before = snapshot(client, seeded.bucket)
    db_before = {s: statuses(seeded, s) for s in STRATEGIES}
    summary = pipeline.run(seeded.config(), DAY)
    after = snapshot(client, seeded.bucket)
    assert {k: v for k, v in after.items() if "/state/" not in k} == {
        k: v for k, v in before.items() if "/state/" not in k
    }
    for name, strategy_summary in summary.strategies.items():
        assert strategy_summary.shards_written == []
        assert (strategy_summary.manifest_added, strategy_summary.manifest_updated) == (0, 0)
        frame, old = statuses(seeded, name), db_before[name]
        failing = old["status"] == policy.FAIL
        assert (frame.loc[failing, "retry_count"] == old.loc[failing, "retry_count"] + 1).all()
        pd.testing.assert_frame_equal(
            frame[~failing].drop(columns="processed_at"), old[~failing].drop(columns="processed_at")
        )


@pytest.mark.s3_backends
def test_rerun_of_a_settled_day_writes_nothing_at_all(client, seed_day):
    mix = {"full": 0.6, "placeholder": 0.2, "pending_status": 0.1, "missing_audio": 0.1}
    seeded = seed_day(videos=30, mix=mix)
    pipeline.run(seeded.config(), DAY)
    before = snapshot(client, seeded.bucket)
    pipeline.run(seeded.config(), DAY)
    assert snapshot(client, seeded.bucket) == before


def test_all_strategies_read_each_object_once(client, seed_day):
    seeded = seed_day(videos=60)
    gets: list[str] = []
    client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: gets.append(params["url_path"])
    )
    client.meta.events.register(
        "before-call.s3.HeadObject", lambda **_: pytest.fail("HEAD requests are never needed")
    )
    pipeline.run(seeded.config(), DAY, client=client)
    embedding_gets = [g for g in gets if "/embeddings/" in g]
    assert embedding_gets and len(embedding_gets) == len(set(embedding_gets))


def test_text_pending_items_skip_the_video_and_audio_fetch(client, seed_day):
    seeded = seed_day(videos=60)
    gets: list[str] = []
    client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: gets.append(params["url_path"])
    )
    pipeline.run(seeded.config(), DAY, client=client)
    pending = [v for v, c in seeded.day.cases.items() if c.startswith("pending")]
    assert pending
    for video_id in pending:
        assert not any(f"/embeddings/video/{video_id}.npy" in g for g in gets)
        assert any(f"/embeddings/text/{video_id}.npy" in g for g in gets)


def assert_stopped(summary, strategy: str, pattern: str) -> None:
    """The strategy stopped alone: named with its reason, and nothing of it in the published summary."""
    assert strategy in summary.stopped and strategy not in summary.strategies
    assert re.search(pattern, summary.stopped[strategy]), summary.stopped[strategy]


TEXT_STATE_KEY = "clipfarm/state/text_downloader.sqlite"


def text_stage_processes(client, bucket, video_id, status="success", processed_at="2026-03-02T09:00:00Z"):
    """What the text stage does when it (re)processes a video: its row gets a new status and processed_at."""
    body = client.get_object(Bucket=bucket, Key=TEXT_STATE_KEY)["Body"].read()
    connection = sqlite3.connect(":memory:")
    connection.deserialize(body)
    connection.execute(
        "UPDATE processed_items SET status = ?, processed_at = ? WHERE video_id = ?",
        (status, processed_at, video_id),
    )
    connection.commit()
    client.put_object(Bucket=bucket, Key=TEXT_STATE_KEY, Body=bytes(connection.serialize()))
    connection.close()


@pytest.mark.s3_backends
def test_placeholder_is_upgraded_when_text_appears(client, seed_day):
    seeded = seed_day(videos=40)
    pipeline.run(seeded.config(), DAY)
    placeholder = next(v for v, c in seeded.day.cases.items() if c == "placeholder")
    text = synthetic.npy_bytes(np.full(768, 0.5, np.float32))
    seeded.objects[f"embeddings/text/{placeholder}.npy"] = text
    client.put_object(Bucket=seeded.bucket, Key=f"clipfarm/embeddings/text/{placeholder}.npy", Body=text)
    text_stage_processes(client, seeded.bucket, placeholder)
    summary = pipeline.run(seeded.config(), DAY)
    for strategy in STRATEGIES:
        assert statuses(seeded, strategy).loc[placeholder, "status"] == policy.SUCCESS_FULL
        run = summary.strategies[strategy]
        assert run.counts[policy.SUCCESS_FULL] == 1
        assert policy.SUCCESS_PLACEHOLDER not in run.counts
        assert (run.manifest_added, run.manifest_updated) == (0, 1)
        rows = assert_every_pointer_resolves(client, seeded, strategy).to_pandas().set_index("video_id")
        assert rows.loc[placeholder, "text_present"] == 1
        assert rows.loc[placeholder, "fusion_status"] == policy.SUCCESS_FULL
    assert summary.strategies["concat"].upgrade_checked == 0  # no news for the others: not even looked at


def test_placeholders_without_text_stage_news_cost_no_request(client, seed_day):
    """A placeholder is rechecked only when the text stage's row for it changed since the last run, so a
    corpus of placeholders costs nothing per day; a text embedding uploaded without that signal waits."""
    seeded = seed_day(videos=40)
    pipeline.run(seeded.config(), DAY)
    placeholders = [v for v, c in seeded.day.cases.items() if c == "placeholder"]
    text = synthetic.npy_bytes(np.full(768, 0.5, np.float32))
    client.put_object(Bucket=seeded.bucket, Key=f"clipfarm/embeddings/text/{placeholders[0]}.npy", Body=text)
    gets = []
    client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: gets.append(params["url_path"])
    )
    summary = pipeline.run(seeded.config(), DAY)
    assert not [g for g in gets if "/embeddings/" in g]
    assert statuses(seeded, "concat").loc[placeholders[0], "status"] == policy.SUCCESS_PLACEHOLDER
    assert summary.strategies["concat"].upgrade_checked == 0
    text_stage_processes(client, seeded.bucket, placeholders[0], status="no_captions")  # re-processed
    summary = pipeline.run(seeded.config(), DAY)
    assert statuses(seeded, "concat").loc[placeholders[0], "status"] == policy.SUCCESS_FULL
    assert summary.strategies["concat"].upgrade_checked == 0


@pytest.mark.s3_backends
def test_failures_turn_terminal_after_retries_and_reset_on_hash_change(client, seed_day):
    seeded = seed_day(videos=40)
    broken = next(v for v, c in seeded.day.cases.items() if c == "corrupt_nan")
    history = []
    for _ in range(5):
        pipeline.run(seeded.config(strategies=("concat",), max_fail_retries=3), DAY)
        row = statuses(seeded, "concat").loc[broken]
        history.append((row["status"], int(row["retry_count"]), row["processed_at"]))
    assert [h[:2] for h in history] == [
        ("fail", 1),
        ("fail", 2),
        ("fail", 3),
        ("fail_terminal", 4),
        ("fail_terminal", 4),
    ]
    assert history[-1][2] == history[-2][2], "a fail_terminal item must leave the delta"
    metadata = seeded.day.metadata_csv.decode().replace(f"shorts/{broken},", f"shorts/{broken}?v2,")
    client.put_object(
        Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=metadata.encode()
    )
    pipeline.run(seeded.config(strategies=("concat",)), DAY)
    row = statuses(seeded, "concat").loc[broken]
    assert (row["status"], row["retry_count"]) == ("fail", 1)


def test_as_of_filter_keeps_later_rows_out(client, seed_day):
    seeded = seed_day(videos=30)
    pipeline.run(seeded.config(strategies=("concat",)), date(2026, 2, 25))
    assert statuses(seeded, "concat").empty
    early = pipeline.run(seeded.config(strategies=("concat",)), date(2026, 2, 27)).strategies["concat"]
    frame = statuses(seeded, "concat")
    with_old_rows = sorted(v for n, v in enumerate(seeded.day.cases) if n % 10 == 0)
    assert sorted(frame.index) == with_old_rows, "only the rows captured by 2026-02-26 exist on 02-27"
    assert all("date=2026-02-27" in k for k in early.shards_written)
    summary = pipeline.run(seeded.config(strategies=("concat",)), DAY)
    assert summary.strategies["concat"].delta == 30, "the later rows change the hash of the early ones"
    assert all(
        k.split("date=")[1].startswith("2026-03-01") for k in summary.strategies["concat"].shards_written
    )


def test_a_fresh_state_dir_continues_from_the_state_table(client, seed_day, tmp_path):
    """--state-dir is only a cache: another machine continues where the bucket says, writing nothing."""
    seeded = seed_day(videos=40, mix={"full": 0.8, "placeholder": 0.1, "missing_video": 0.1})
    first = pipeline.run(seeded.config(), DAY)
    assert first.strategies["concat"].state_source == "new state table"
    before = snapshot(client, seeded.bucket)
    second = pipeline.run(seeded.config(state_dir=tmp_path / "other-machine"), DAY)
    assert second.strategies["concat"].state_source == "state table"
    assert second.strategies["concat"].counts.get(policy.SUCCESS_FULL, 0) == 0
    assert snapshot(client, seeded.bucket) == before


def test_include_captured_at_in_hash_refuses_nothing_and_reenters_all(client, seed_day):
    seeded = seed_day(videos=30)
    pipeline.run(seeded.config(strategies=("sum_pool",)), DAY)
    summary = pipeline.run(seeded.config(strategies=("sum_pool",), include_captured_at_in_hash=True), DAY)
    safe = [v for v, c in seeded.day.cases.items() if c != "unsafe_id"]
    assert summary.strategies["sum_pool"].delta == 30
    frame = statuses(seeded, "sum_pool")
    full = [v for v in safe if seeded.day.cases[v] == "full"]
    table = manifest_table(client, seeded, "sum_pool").to_pandas()
    assert (table.groupby("video_id").size().loc[full] == 2).all()
    assert set(frame.index) == set(safe)


def test_max_items_and_small_shards(client, seed_day):
    seeded = seed_day(videos=60)
    summary = pipeline.run(seeded.config(strategies=("max_pool",), max_items=25, shard_size=10), DAY)
    run = summary.strategies["max_pool"]
    invalid = run.counts.get(policy.INVALID_VIDEO_ID, 0)
    assert sum(run.counts.values()) == 25 + invalid
    assert run.delta == len(seeded.day.cases) and run.deferred == run.delta - 25 - invalid
    assert [k.rsplit("/", 1)[1] for k in run.shards_written] == [
        "part-0000.npz",
        "part-0001.npz",
        "part-0002.npz",
    ]
    rest = pipeline.run(seeded.config(strategies=("max_pool",), shard_size=10), DAY).strategies["max_pool"]
    assert rest.shards_written[0].endswith("part-0003.npz")
    assert_every_pointer_resolves(client, seeded, "max_pool")


def test_text_state_unavailable_only_blocks_items_that_need_it(client, seed_day):
    seeded = seed_day(videos=40)
    client.delete_object(Bucket=seeded.bucket, Key="clipfarm/state/text_downloader.sqlite")
    summary = pipeline.run(seeded.config(strategies=("concat",)), DAY)
    frame = statuses(seeded, "concat")
    needs_state = [v for v, c in seeded.day.cases.items() if c == "placeholder" or c.startswith("pending")]
    assert (frame.loc[needs_state, "status"] == policy.MISSING_TEXT_UNAVAILABLE).all()
    full = [v for v, c in seeded.day.cases.items() if c == "full"]
    assert (frame.loc[full, "status"] == policy.SUCCESS_FULL).all()
    assert "not found" in summary.text_state


def test_schema_drift_stops_before_writing_and_burns_no_retries(client, seed_day):
    seeded = seed_day(videos=30)
    pipeline.run(seeded.config(strategies=("concat",)), DAY)
    db_before = statuses(seeded, "concat")
    rng = np.random.default_rng(5)
    pending = [v for v, c in seeded.day.cases.items() if c in ("full",)]
    for video_id in pending:
        body = synthetic.npy_bytes(rng.standard_normal(512).astype(np.float32))
        client.put_object(Bucket=seeded.bucket, Key=f"clipfarm/embeddings/video/{video_id}.npy", Body=body)
    metadata = seeded.day.metadata_csv.decode().replace("/shorts/", "/shorts/v2/")
    client.put_object(
        Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=metadata.encode()
    )
    before = snapshot(client, seeded.bucket)
    summary = pipeline.run(seeded.config(strategies=("concat",)), DAY)
    assert_stopped(summary, "concat", "video embeddings are 512-d.*video_dim=768.*migrate-schema")
    assert snapshot(client, seeded.bucket) == before
    pd.testing.assert_frame_equal(statuses(seeded, "concat"), db_before)


def test_missing_metadata_is_a_config_error_and_writes_nothing(client, seed_day):
    seeded = seed_day(videos=10)
    before = snapshot(client, seeded.bucket)
    with pytest.raises(ConfigError, match="not found"):
        pipeline.run(seeded.config(metadata_uri=f"s3://{seeded.bucket}/nope.csv"), DAY)
    assert snapshot(client, seeded.bucket) == before


def test_drift_found_in_a_later_batch_withdraws_the_shards_already_written(client, seed_day):
    seeded = seed_day(videos=20, mix={"full": 1.0})
    pipeline.run(seeded.config(strategies=("max_pool",)), DAY)
    later, objects = synthetic.make_day(60, mix={"full": 1.0}, prefix="b", seed=1)
    rng = np.random.default_rng(2)
    for n, video_id in enumerate(sorted(later.cases)):
        if n >= 10:
            objects[f"embeddings/audio/{video_id}.npy"] = synthetic.npy_bytes(
                rng.standard_normal(512).astype(np.float32)
            )
    synthetic.seed(client, seeded.bucket, seeded.root, later, objects)
    both = seeded.day.metadata_csv + later.metadata_csv.split(b"\n", 1)[1]
    client.put_object(Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=both)
    before = {
        k: v for k, v in snapshot(client, seeded.bucket).items() if "/fused/" in k or "/state/fusion_" in k
    }
    summary = pipeline.run(seeded.config(strategies=("max_pool",), shard_size=10), DAY)
    assert_stopped(summary, "max_pool", "512-d")
    after = {
        k: v for k, v in snapshot(client, seeded.bucket).items() if "/fused/" in k or "/state/fusion_" in k
    }
    assert after == before


def test_retries_of_odd_items_are_not_taken_for_drift(client, seed_day):
    seeded = seed_day(videos=40, mix={"full": 0.7, "odd_dim": 0.3})
    pipeline.run(seeded.config(strategies=("concat",)), DAY)
    summary = pipeline.run(seeded.config(strategies=("concat",), shard_size=4), DAY)
    odd = [v for v, c in seeded.day.cases.items() if c == "odd_dim"]
    assert summary.strategies["concat"].counts == {policy.FAIL: len(odd)}
    assert (statuses(seeded, "concat").loc[odd, "retry_count"] == 2).all()


def test_a_full_day_lists_instead_of_getting_missing_objects(client, seed_day):
    seeded = seed_day(videos=200)
    calls: list[tuple[str, int]] = []
    client.meta.events.register(
        "after-call.s3.*",
        lambda http_response, model, **_: calls.append((model.name, http_response.status_code)),
    )
    summary = pipeline.run(seeded.config(strategies=("concat",)), DAY, client=client)
    assert statuses(seeded, "concat")["status"].to_dict() == {
        v: s for v, s in seeded.day.expected_status().items() if s != policy.INVALID_VIDEO_ID
    }
    missing_gets = [c for c in calls if c == ("GetObject", 404)]
    embedding_objects = len(seeded.objects)
    gets = sum(1 for name, _ in calls if name == "GetObject")
    assert len(missing_gets) <= 3, "only bookkeeping objects (mirror, manifest, lock) may 404"
    assert gets <= embedding_objects + 5
    # per strategy: the shard prefix, and the open re-fusion requests (an empty answer on a normal day)
    assert sum(1 for name, _ in calls if name == "ListObjectsV2") <= 4 + 2 * len(summary.strategies)


def test_a_small_delta_over_a_big_prefix_gets_instead_of_listing(client, seed_day):
    seeded = seed_day(videos=200)
    pipeline.run(seeded.config(strategies=("concat",), max_items=150), DAY)
    calls: list[str] = []
    client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda params, **_: calls.append(params["query_string"]["prefix"])
    )
    pipeline.run(seeded.config(strategies=("concat",)), DAY, client=client)
    assert "/embeddings/" not in " ".join(calls), f"expected no embedding LIST for a small delta, got {calls}"
    assert len(calls) == 3, calls  # the stale staged objects, the open re-fusion requests, the day's shards


def test_new_strategies_record_their_options_and_refuse_other_ones(client, seed_day):
    seeded = seed_day(videos=30)
    options = FusionOptions(l2_normalize=True, weights=(2.0, 1.0, 0.5))
    config = seeded.config(strategies=("mean_pool", "weighted_pool"), l2_normalize=True, weights=(2, 1, 0.5))
    summary = pipeline.run(config, DAY)
    assert summary.strategies["weighted_pool"].fused_dim == 769
    for strategy in ("mean_pool", "weighted_pool"):
        table = manifest_table(client, seeded, strategy)
        for row in table.to_pylist():
            shard = shards.decode(
                client.get_object(Bucket=seeded.bucket, Key=row["fused_key"])["Body"].read()
            )
            got = shard["vectors"][row["shard_idx"]]
            assert got.tobytes() == expected_vector(seeded, strategy, row["video_id"], options).tobytes()
        lock = json.loads(
            client.get_object(Bucket=seeded.bucket, Key=f"clipfarm/fused/{strategy}/schema.json")[
                "Body"
            ].read()
        )
        assert lock["l2_normalized"] is True
        assert lock["weights"] == ([2.0, 1.0, 0.5] if strategy == "weighted_pool" else None)
    summary = pipeline.run(
        seeded.config(strategies=("weighted_pool",), l2_normalize=True, weights=(1, 1, 1)), DAY
    )
    assert_stopped(summary, "weighted_pool", "weights locked")
    assert_stopped(
        pipeline.run(seeded.config(strategies=("mean_pool",)), DAY), "mean_pool", "l2_normalized locked True"
    )


def test_a_text_row_for_another_source_hash_is_named_as_the_cause(seed_day):
    seeded = seed_day(videos=60, mix={"full": 0.5, "pending_hash": 0.3, "pending_status": 0.2})
    pipeline.run(seeded.config(strategies=("concat",)), DAY)
    frame = statuses(seeded, "concat")
    stale = [v for v, c in seeded.day.cases.items() if c == "pending_hash"]
    waiting = [v for v, c in seeded.day.cases.items() if c == "pending_status"]
    assert (frame.loc[stale, "status"] == policy.MISSING_TEXT_PENDING).all()
    assert frame.loc[stale, "error"].str.contains("is for another source_hash").all()
    assert not frame.loc[waiting, "error"].str.contains("source_hash").any()


def test_public_readers_return_the_contract_columns(seed_day):
    seeded = seed_day(videos=40)
    summary = pipeline.run(seeded.config(strategies=("concat",)), DAY)
    rows = read_manifest("concat", bucket=seeded.bucket)
    assert list(rows.columns) == manifest.SCHEMA.names
    assert len(rows) == summary.strategies["concat"].fused
    assert not rows.duplicated(["video_id", "source_hash"]).any()
    items = read_state("concat", bucket=seeded.bucket)
    assert list(items.columns) == list(state_schema.STATE_COLUMNS)
    counts = summary.strategies["concat"].counts
    recorded = sum(counts.values()) - counts.get(policy.INVALID_VIDEO_ID, 0)  # unsafe ids are never stored
    assert items["video_id"].is_unique and len(items) == recorded
    fused = items[items["status"].isin(policy.FUSED_STATUSES)]
    assert set(fused["video_id"]) == set(rows["video_id"])
    assert (
        read_manifest("sum_pool", bucket=seeded.bucket).empty
        and read_state("sum_pool", bucket=seeded.bucket).empty
    )
