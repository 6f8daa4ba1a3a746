"""Lineage: every manifest row says which version of each input it was made from and under which lock,
and `read_vectors` never mixes vectors fused under different locks without saying so."""

from __future__ import annotations

import warnings
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from dagster import materialize

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.admin import changes, maintenance, sweep
from clipfarm_fusion.cli.main import main
from clipfarm_fusion.core.kernels import FusionOptions
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.definitions import defs
from clipfarm_fusion.defs.resources import FusionResource
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.read import verify
from clipfarm_fusion.read.vectors import ALL_LOCKS, OlderLockWarning, read_vectors, under_lock
from clipfarm_fusion.run import commit, pipeline, plan
from clipfarm_fusion.stores import refusals, s3io, schema_lock, state
from clipfarm_fusion.stores.schema_lock import SchemaLock

DAY = date(2026, 3, 1)
MIX = {"full": 0.6, "placeholder": 0.4}


def _listing(client, bucket: str, prefix: str) -> dict[str, str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


def test_manifest_rows_record_each_input_etag_and_the_lock(client, seed_day, capsys):
    seeded = seed_day(videos=20, mix=MIX, dim=8)
    pipeline.run(seeded.config(strategies=("concat",)), DAY, client=client)
    rows = read_manifest("concat", bucket=seeded.bucket, root=seeded.root, client=client)
    etags = _listing(client, seeded.bucket, f"{seeded.root}/embeddings/")
    assert len(rows) == 20
    for modality in ("video", "audio"):
        assert rows[f"{modality}_etag"].tolist() == [etags[k] for k in rows[f"{modality}_emb_key"]]
    with_text = rows["text_present"] == 1
    assert with_text.any() and (~with_text).any()
    assert rows.loc[with_text, "text_etag"].tolist() == [
        etags[k] for k in rows.loc[with_text, "text_emb_key"]
    ]
    assert rows.loc[~with_text, "text_etag"].isna().all(), "no text was read for a placeholder"
    assert rows[["video_version_id", "audio_version_id", "text_version_id"]].isna().all().all()
    lock = schema_lock.read(client, seeded.bucket, Layout(seeded.root).schema_key("concat"))
    assert set(rows["lock_id"]) == {lock.lock_id}
    first = rows.iloc[0]
    inspect = ["inspect", "--strategy", "concat", "--bucket", seeded.bucket, "--video-id", first["video_id"]]
    assert main(inspect) == 0
    shown = capsys.readouterr().out
    assert f"lock_id={lock.lock_id}" in shown and f"{lock.lock_id:<28} {20:>8}" in shown
    assert f"lock {lock.lock_id}  etags video={first['video_etag']} audio={first['audio_etag']}" in shown


def test_a_versioned_bucket_records_the_version_read(client, bucket, seed_day):
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    seeded = seed_day(videos=6, mix={"full": 1.0}, dim=8)
    pipeline.run(seeded.config(strategies=("concat",)), DAY, client=client)
    rows = read_manifest("concat", bucket=seeded.bucket, root=seeded.root, client=client)
    versions = client.list_object_versions(Bucket=bucket, Prefix=f"{seeded.root}/embeddings/video/")
    latest = {v["Key"]: v["VersionId"] for v in versions["Versions"] if v["IsLatest"]}
    assert rows["video_version_id"].tolist() == [latest[k] for k in rows["video_emb_key"]]


def _lock(**options) -> SchemaLock:
    return SchemaLock.build("concat", (4, 4, 4), FusionOptions(**options))


@pytest.mark.fast
def test_the_lock_id_names_the_dims_and_every_option_but_not_the_time():
    assert _lock().lock_id == _lock().lock_id
    assert _lock().lock_id != _lock(l2_normalize=True).lock_id, "a same-dims option change is a new lock"
    assert _lock().lock_id != SchemaLock.build("concat", (4, 4, 5), FusionOptions()).lock_id
    assert _lock().lock_id != _lock(mask=False).lock_id


@pytest.mark.fast
def test_rows_are_kept_by_lock_and_untagged_rows_by_width_and_age():
    old, new = _lock(), _lock(l2_normalize=True)
    migrated = SchemaLock(**{**new.__dict__, "history": ({"replaced_at": "2026-03-05T00:00:00+00:00"},)})
    rows = pa.table(
        {
            "video_id": ["a", "b", "c", "d"],
            "fused_dim": [old.fused_dim] * 4,
            "lock_id": [old.lock_id, new.lock_id, None, None],
            "fused_at": [None, None, "2026-03-01T00:00:00+00:00", "2026-03-06T00:00:00+00:00"],
        }
    )
    assert under_lock(rows, migrated).to_pylist() == [False, True, False, True]
    assert under_lock(rows, migrated, old.lock_id).to_pylist() == [True, False, False, False]
    assert under_lock(rows, migrated, ALL_LOCKS).to_pylist() == [True] * 4
    assert under_lock(rows, None).to_pylist() == [True] * 4, "no lock yet: nothing to hold back"
    assert under_lock(rows, new).to_pylist() == [False, True, True, True], "never migrated: width decides"


def test_read_vectors_keeps_the_current_lock_and_warns_about_the_rest(client, seed_day):
    """A same-dims option change (L2 on) after a day was fused: the old rows stay in the manifest, and a
    default read returns only the rows of the current lock, warning with how many it left out."""
    seeded = seed_day(videos=10, mix={"full": 1.0}, dim=8)
    pipeline.run(seeded.config(strategies=("concat",)), DAY, client=client)
    before = schema_lock.read(client, seeded.bucket, Layout(seeded.root).schema_key("concat"))
    assert main(["migrate-schema", "--strategy", "concat", "--bucket", seeded.bucket, "--l2-normalize"]) == 0
    with pytest.warns(OlderLockWarning) as caught:
        ids, vectors, _ = read_vectors("concat", bucket=seeded.bucket, root=seeded.root, client=client)
    assert ids == [] and vectors.shape[0] == 0
    assert caught[0].message.locks == {before.lock_id: 10} and len(caught[0].message.ids) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids, vectors, _ = read_vectors(
            "concat", bucket=seeded.bucket, root=seeded.root, client=client, lock=before.lock_id
        )
    assert len(ids) == 10 and not np.allclose(np.linalg.norm(vectors[:, :8], axis=1), 1.0)


def _request(client, seeded, ids, reason=refusals.REFUSE):
    store = state.open_store(client, seeded.bucket, Layout(seeded.root), "concat", seeded.state_dir, 5.0)
    return refusals.write(client, seeded.bucket, Layout(seeded.root), "concat", ids, reason, store.version)


def test_a_request_refuses_its_videos_once_and_is_then_removed(client, seed_day):
    seeded = seed_day(videos=12, mix={"full": 1.0}, dim=8)
    config = seeded.config(strategies=("concat",))
    pipeline.run(config, DAY, client=client)
    before = read_manifest("concat", bucket=seeded.bucket, root=seeded.root, client=client).set_index(
        "video_id"
    )
    chosen = sorted(before.index)[:3]
    request = _request(client, seeded, [*chosen, "not-in-the-horizon"])
    summary = pipeline.run(config, DAY, client=client).strategies["concat"]
    assert summary.requested == {refusals.REFUSE: 3} and summary.requests_pending == 4
    assert summary.counts == {"success_full": 3} and summary.manifest_updated == 3
    after = read_manifest("concat", bucket=seeded.bucket, root=seeded.root, client=client).set_index(
        "video_id"
    )
    moved = after["fused_at"] != before["fused_at"].reindex(after.index)
    assert sorted(after.index[moved]) == chosen
    assert client.list_objects_v2(Bucket=seeded.bucket, Prefix=request.key).get("KeyCount") == 1
    again = pipeline.run(config, DAY, client=client).strategies["concat"]
    assert again.delta == 0 and again.requested == {}, "committed: nothing of the request is redone"
    assert client.list_objects_v2(Bucket=seeded.bucket, Prefix=request.key).get("KeyCount") == 0
    assert verify.verify_strategy(client, seeded.bucket, seeded.root, "concat").ok


@pytest.mark.fast
def test_key_ranges_cover_the_prefix_once():
    keys = [f"p/{i:03d}.npy" for i in range(7)]
    assert changes.ranges(keys, per_range=3) == [(None, keys[2]), (keys[2], keys[5]), (keys[5], None)]
    assert changes.ranges(keys[:6], per_range=3) == [(None, keys[2]), (keys[2], None)]
    assert changes.ranges([], per_range=3) == [(None, None)]


def test_a_same_dims_re_embedding_is_detected_and_re_fused(client, seed_day, monkeypatch):
    """Upstream recomputes three video embeddings with another model (same 8 dims, same keys): detection
    finds exactly those, and the next run fuses them again under `changed_upstream`."""
    monkeypatch.setattr(changes, "RANGE_KEYS", 4)  # several key ranges, listed side by side
    seeded = seed_day(videos=12, mix={"full": 1.0}, dim=8)
    config = seeded.config(strategies=("concat",))
    pipeline.run(config, DAY, client=client)
    assert changes.detect(client, seeded.bucket, seeded.root, "concat").changed == []
    rows = read_manifest("concat", bucket=seeded.bucket, root=seeded.root, client=client)
    swapped = sorted(rows["video_id"])[1:4]
    new_model = np.full(8, 7.0, dtype=np.float32)
    for video_id in swapped:
        key = Layout(seeded.root).embedding_key("video", video_id)
        client.put_object(Bucket=seeded.bucket, Key=key, Body=synthetic.npy_bytes(new_model))
    found = changes.detect(client, seeded.bucket, seeded.root, "concat")
    assert found.changed == swapped and found.by_modality == {"video": 3, "audio": 0, "text": 0}
    assert found.keys_listed == 36 and found.request_key is not None
    summary = pipeline.run(config, DAY, client=client).strategies["concat"]
    assert summary.requested == {refusals.CHANGED_UPSTREAM: 3} and summary.counts == {"success_full": 3}
    ids, vectors, _ = read_vectors("concat", swapped, bucket=seeded.bucket, root=seeded.root, client=client)
    assert ids == swapped and (vectors[:, :8] == 7.0).all(), "the new model's vectors are published"
    assert changes.detect(client, seeded.bucket, seeded.root, "concat").changed == []


def test_gc_keeps_the_shards_a_snapshot_points_at_until_it_is_deleted(client, seed_day):
    """A trainer reads a snapshot; a re-fusion then replaces every vector, orphaning the old shards.
    gc keeps them while the snapshot exists and sweeps them once it is gone."""
    seeded = seed_day(videos=8, mix={"full": 1.0}, dim=8)
    config = seeded.config(strategies=("concat",))
    pipeline.run(config, DAY, client=client)
    where, _ = maintenance.snapshot_manifest(client, seeded.bucket, seeded.root, "concat")
    old_shards = set(
        read_manifest("concat", bucket=seeded.bucket, root=seeded.root, client=client)["fused_key"]
    )
    _request(client, seeded, sorted(seeded.day.cases))
    pipeline.run(config, DAY, client=client)
    assert not old_shards & set(
        read_manifest("concat", bucket=seeded.bucket, root=seeded.root, client=client)["fused_key"]
    )
    kept = sweep.sweep(client, seeded.bucket, seeded.root, "concat", older_than=timedelta(0))
    assert not kept.orphans and all(client.head_object(Bucket=seeded.bucket, Key=k) for k in old_shards)
    client.delete_object(Bucket=seeded.bucket, Key=where.removeprefix(f"s3://{seeded.bucket}/"))
    swept = sweep.sweep(client, seeded.bucket, seeded.root, "concat", older_than=timedelta(0))
    assert {shard.key for shard in swept.orphans} == old_shards and set(swept.deleted) == old_shards


def test_the_dagster_jobs_detect_request_and_the_next_materialisation_fuses(client, seed_day, monkeypatch):
    """detect_changes (run config dry_run) and refuse (run config `ids`) as the launchpad runs them;
    the strategy's next materialisation fuses the request and says so in its metadata."""
    seeded = seed_day(videos=10, mix={"full": 1.0}, dim=8)
    monkeypatch.setenv("CLIPFARM_BUCKET", seeded.bucket)
    resources = {
        "fusion": FusionResource(bucket=seeded.bucket, root=seeded.root, state_dir=str(seeded.state_dir))
    }
    assert materialize(
        [fuse_embeddings], partition_key="2026-03-01", resources=resources, selection=["concat"]
    ).success
    swapped = sorted(seeded.day.cases)[0]
    key = Layout(seeded.root).embedding_key("audio", swapped)
    client.put_object(Bucket=seeded.bucket, Key=key, Body=synthetic.npy_bytes(np.full(8, 3.0, np.float32)))

    detect = defs.get_job_def("detect_changes")
    dry = detect.execute_in_process(
        run_config={"ops": {"detect_changes_all_strategies": {"config": {"dry_run": True}}}}
    )
    assert dry.success
    metadata = next(
        e.event_specific_data.metadata for e in dry.all_node_events if e.event_type_value == "STEP_OUTPUT"
    )
    assert metadata["concat"].value["changed"] == 1 and metadata["concat"].value["request"] is None

    refuse = defs.get_job_def("refuse")
    ids = sorted(seeded.day.cases)[:4]
    config = {"ops": {"request_refusal": {"config": {"strategy": "concat", "ids": ids}}}}
    requested = refuse.execute_in_process(run_config=config)
    assert requested.success and requested.output_for_node("request_refusal") == 4
    again = refuse.execute_in_process(run_config=config)
    assert (
        again.success
        and len(s3io.list_keys(client, seeded.bucket, Layout(seeded.root).refuse_prefix("concat"))) == 1
    )
    both = {"ops": {"request_refusal": {"config": {"strategy": "concat", "ids": ids, "all": True}}}}
    assert not refuse.execute_in_process(run_config=both, raise_on_error=False).success

    result = materialize(
        [fuse_embeddings], partition_key="2026-03-01", resources=resources, selection=["concat"]
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    shown = {k: v.value for k, v in event.materialization.metadata.items()}
    assert (
        shown["requested/refuse"] == 4
        and shown["requests_pending"] == 4
        and shown["status/success_full"] == 4
    )


def test_a_large_day_publishes_in_slices_and_a_kill_between_them_converges(client, seed_day, monkeypatch):
    """A corpus-sized day (a new strategy, a re-fusion) is published in bounded slices, manifest then
    state each, a run of consecutive chunks at a time, each chunk read again when its slice is published;
    killed after the first slice's state, the rerun fuses only the videos not yet done."""
    monkeypatch.setattr(commit, "COMMIT_SLICE", 5)
    seeded = seed_day(videos=12, mix={"full": 1.0}, dim=8)
    config = seeded.config(strategies=("concat",), chunk_size=5)
    calls = {"n": 0}
    real = state.StateStore.commit

    def dies_on_the_second_slice(self, rows, cursors):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed between slices")
        return real(self, rows, cursors)

    monkeypatch.setattr(state.StateStore, "commit", dies_on_the_second_slice)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, DAY, client=client)
    monkeypatch.setattr(state.StateStore, "commit", real)
    done = read_state("concat", bucket=seeded.bucket, root=seeded.root, client=client)
    assert len(done) == 5, "the first slice is published, manifest and state"
    rerun = pipeline.run(config, DAY, client=client).strategies["concat"]
    assert rerun.delta == 7 and rerun.counts == {"success_full": 7}
    assert len(read_state("concat", bucket=seeded.bucket, root=seeded.root, client=client)) == 12
    assert verify.verify_strategy(client, seeded.bucket, seeded.root, "concat").ok
    assert pipeline.run(config, DAY, client=client).strategies["concat"].delta == 0


def test_a_day_planned_in_id_ranges_publishes_what_one_range_does(client, seed_day, monkeypatch, caplog):
    """Past PLAN_SLICE kept horizon rows the plan works one id range at a time; the same day planned
    whole (another root, the same inputs) publishes the same state and counts, and both converge."""
    seeded = {root: seed_day(videos=40, mix=MIX, dim=8, root=root, seed=7) for root in ("whole", "ranged")}
    results = {}
    for root, day in seeded.items():
        monkeypatch.setattr(plan, "PLAN_SLICE", 6 if root == "ranged" else 500_000)
        with caplog.at_level("INFO"):
            results[root] = pipeline.run(day.config(strategies=("concat",), chunk_size=4), DAY, client=client)
    assert "planning id range 2 of" in caplog.text
    whole, ranged = (results[r].strategies["concat"] for r in ("whole", "ranged"))
    assert ranged.delta == whole.delta == 40 and ranged.counts == whole.counts
    columns = ["video_id", "status", "source_hash", "retry_count", "error"]
    states = {r: read_state("concat", bucket=d.bucket, root=r, client=client) for r, d in seeded.items()}
    pd.testing.assert_frame_equal(
        *(states[r][columns].sort_values("video_id").reset_index(drop=True) for r in ("whole", "ranged"))
    )
    reruns = {}
    for root, day in seeded.items():
        assert verify.verify_strategy(client, day.bucket, root, "concat").ok
        reruns[root] = pipeline.run(day.config(strategies=("concat",), chunk_size=4), DAY, client=client)
    again = [reruns[r].strategies["concat"] for r in ("whole", "ranged")]
    assert again[0].counts == again[1].counts == {"success_text_placeholder": 16}, "only late text is due"
