"""Histories of runs, not single runs: backfills behind later days, overlapping days, late text, long
runs. After each, the invariants of docs/safety.md ("Any order of runs") hold: I1 the newest committed
fusion wins, I2 state and manifest agree, I3 no run moves a video backwards, I4 every pointer resolves."""

from __future__ import annotations

import io
import logging
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.admin import sweep
from clipfarm_fusion.cli.main import main
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.read import checks, verify
from clipfarm_fusion.read.vectors import latest_per_video, read_vectors
from clipfarm_fusion.run import chunk, commit, pipeline, plan, staging

LOG = logging.getLogger("test")
ROOT = "clipfarm"
MIX = {"full": 0.5, "placeholder": 0.5}


def _seed(client, bucket, videos=8):
    day, objects = synthetic.make_day(videos, dim=8, mix=MIX, run_date=date(2026, 3, 1))
    synthetic.seed(client, bucket, ROOT, day, objects, threads=8)
    placeholders = sorted(v for v, case in day.cases.items() if case == "placeholder")
    return day, placeholders


def _text_rows(day, arrived: set[str], processed_at: str) -> list[tuple]:
    rows = []
    for video_id, case in day.cases.items():
        source_hash = _hash(day, video_id)
        if case == "placeholder" and video_id not in arrived:
            rows.append((video_id, source_hash, "2026-03-01T00:00:00+00:00", "no_captions", None))
        elif case == "placeholder":
            rows.append((video_id, source_hash, processed_at, "success", None))
        else:
            rows.append((video_id, source_hash, "2026-03-01T00:00:00+00:00", "success", None))
    return rows


def _hash(day, video_id: str) -> str:
    import hashlib

    return hashlib.sha256(synthetic.url_for(video_id).encode()).hexdigest()


def _text_file(client, bucket, video_id: str) -> None:
    vector = np.arange(8, dtype=np.float32) + 1
    client.put_object(
        Bucket=bucket, Key=Layout(ROOT).embedding_key("text", video_id), Body=synthetic.npy_bytes(vector)
    )


def _text_row(
    client, bucket, day, arrived: set[str], processed_at: str = "2026-03-11T00:00:00+00:00"
) -> None:
    body = synthetic.text_state_db(_text_rows(day, arrived, processed_at))
    client.put_object(Bucket=bucket, Key=Layout(ROOT).text_state_key(), Body=body)


def _config(bucket, tmp_path, **overrides):
    from clipfarm_fusion.config import FusionConfig

    return FusionConfig(
        bucket=bucket, root=ROOT, strategies=("concat",), state_dir=tmp_path, fetch_threads=4, **overrides
    )


def _agree(client, bucket) -> None:
    """I2 and I4 through `verify`, as a user runs it."""
    report = verify.verify_strategy(client, bucket, ROOT, "concat")
    assert report.ok, report.lines()


def test_a_backfill_behind_a_later_day_upgrades_placeholders_and_the_manifest_follows(
    client, bucket, tmp_path
):
    """Case 1: 03-10 fuses placeholders, their text arrives, a backfill of 03-05 fuses them in full.
    The manifest used to keep the 03-10 placeholder rows (the larger fused_key as text) while the state
    said success_full; now the newer commit wins and both say success_full."""
    day, placeholders = _seed(client, bucket)
    config = _config(bucket, tmp_path)
    pipeline.run(config, date(2026, 3, 10), client=client)
    for video_id in placeholders:
        _text_file(client, bucket, video_id)
    _text_row(client, bucket, day, set(placeholders))
    backfill = pipeline.run(config, date(2026, 3, 5), client=client)
    assert backfill.strategies["concat"].behind == "2026-03-10"
    assert backfill.strategies["concat"].counts == {"success_full": len(placeholders)}
    assert backfill.strategies["concat"].manifest_updated == len(placeholders)
    state = read_state("concat", bucket=bucket, root=ROOT, client=client).set_index("video_id")
    assert (state.loc[placeholders, "status"] == "success_full").all()
    ids, vectors, rows = read_vectors("concat", placeholders, bucket=bucket, root=ROOT, client=client)
    assert (rows["text_present"].to_numpy() == 1).all() and (vectors[:, -1] == 1).all()
    assert set(rows["fused_key"].to_pylist()) == set(state.loc[placeholders, "artifact_key"])
    _agree(client, bucket)
    again = pipeline.run(config, date(2026, 3, 11), client=client)
    assert again.strategies["concat"].delta == 0


def test_same_capture_rows_are_ordered_by_commit_not_by_part_numbers_as_text():
    """`part-10000` sorts before `part-9999` as text; fused_at decides."""
    table = pa.table(
        {
            "video_id": ["a", "a"],
            "captured_at": ["2026-03-01T00:00:00Z"] * 2,
            "fused_key": ["x/date=2026-03-01/part-9999.npz", "x/date=2026-03-01/part-10000.npz"],
            "fused_at": ["2026-03-01T10:00:00.000001+00:00", "2026-03-01T10:00:00.000002+00:00"],
        }
    )
    assert latest_per_video(table)["fused_key"].to_pylist() == ["x/date=2026-03-01/part-10000.npz"]


@pytest.mark.s3_backends
def test_overlapping_days_the_later_commit_of_stale_placeholders_yields(client, bucket, tmp_path):
    """Case 2: D+1 plans placeholders before the text arrives, D plans full vectors after, D commits
    first. D+1 used to replace D's full rows and then fail its state commit; now D+1 publishes nothing
    (exit 4 names concat) and D's full vectors stay, state and manifest agreeing."""
    day, placeholders = _seed(client, bucket)
    config = _config(bucket, tmp_path)
    later = plan.plan(config, date(2026, 3, 2), client, LOG)
    later_results = chunk.run_all(config, later, client, LOG)
    for video_id in placeholders:
        _text_file(client, bucket, video_id)
    _text_row(client, bucket, day, set(placeholders))
    earlier = plan.plan(config, date(2026, 3, 1), client, LOG)
    earlier_results = chunk.run_all(config, earlier, client, LOG)
    assert not commit.commit(config, earlier, earlier_results, client).conflicts
    lost = commit.commit(config, later, later_results, client)
    assert list(lost.conflicts) == ["concat"] and not lost.strategies
    manifest = read_manifest("concat", bucket=bucket, root=ROOT, client=client).set_index("video_id")
    assert (manifest.loc[placeholders, "fusion_status"] == "success_full").all()
    _agree(client, bucket)
    rerun = pipeline.run(config, date(2026, 3, 2), client=client)
    assert rerun.strategies["concat"].delta == 0


@pytest.mark.s3_backends
def test_the_cli_exits_4_naming_the_strategy_that_yielded(client, bucket, tmp_path, capsys):
    day, placeholders = _seed(client, bucket)
    config = _config(bucket, tmp_path)
    stale = plan.plan(config, date(2026, 3, 1), client, LOG)
    stale_results = chunk.run_all(config, stale, client, LOG)
    args = [
        "run",
        "--bucket",
        bucket,
        "--strategy",
        "concat",
        "--state-dir",
        str(tmp_path),
        "--run-date",
        "2026-03-01",
    ]
    assert main(args) == 0
    summary = commit.commit(config, stale, stale_results, client)
    assert list(summary.conflicts) == ["concat"]
    assert "concat" in summary.to_table().split("CONFLICT ")[1]


def test_text_whose_row_changed_before_its_file_is_upgraded_when_the_file_appears(client, bucket, tmp_path):
    """Case 3: the run that sees the text stage's news finds no file; the placeholder stays due, and
    the next run (no news any more) upgrades it once the file is there."""
    day, placeholders = _seed(client, bucket)
    config = _config(bucket, tmp_path)
    pipeline.run(config, date(2026, 3, 1), client=client)
    _text_row(client, bucket, day, set(placeholders))  # the row first
    news = pipeline.run(config, date(2026, 3, 2), client=client)
    assert news.strategies["concat"].upgrade_checked == len(placeholders)
    for video_id in placeholders:  # then the file, with no row change
        _text_file(client, bucket, video_id)
    upgraded = pipeline.run(config, date(2026, 3, 3), client=client)
    assert upgraded.strategies["concat"].counts == {"success_full": len(placeholders)}
    _agree(client, bucket)


def test_a_backfill_never_reverts_a_newer_url_nor_spends_a_later_runs_retry(client, bucket, tmp_path):
    """Case 5: a video's URL changes on 03-04; after 03-05 fused the new URL, a backfill of 03-02
    (whose horizon still has the old row) leaves it alone, and says it is behind."""
    day, _ = _seed(client, bucket)
    layout = Layout(ROOT)
    config = _config(bucket, tmp_path)
    horizon = pd.read_csv(io.BytesIO(day.metadata_csv))
    moved = sorted(v for v, c in day.cases.items() if c == "full")[0]
    newer = (
        horizon[horizon["video_id"] == moved]
        .iloc[:1]
        .assign(url=synthetic.url_for(moved) + "?v=2", captured_at="2026-03-04T08:00:00+00:00")
    )
    body = pd.concat([horizon, newer]).to_csv(index=False).encode()
    client.put_object(Bucket=bucket, Key=layout.metadata_key(), Body=body)
    pipeline.run(config, date(2026, 3, 5), client=client)
    state = read_state("concat", bucket=bucket, root=ROOT, client=client).set_index("video_id")
    after = state.loc[moved, ["source_hash", "artifact_key"]].tolist()
    backfill = pipeline.run(config, date(2026, 3, 2), client=client)
    assert backfill.strategies["concat"].behind == "2026-03-05"
    assert "behind_newest_run" in backfill.to_table()
    state = read_state("concat", bucket=bucket, root=ROOT, client=client).set_index("video_id")
    assert state.loc[moved, ["source_hash", "artifact_key"]].tolist() == after
    _agree(client, bucket)


def test_a_run_longer_than_a_day_keeps_its_staged_objects_and_its_shards(client, bucket, tmp_path):
    """Case 4: the staging sweep and gc (even with no grace) spare a live run's objects and shards."""
    day, placeholders = _seed(client, bucket)
    config = _config(bucket, tmp_path)
    pipeline.run(config, date(2026, 3, 1), client=client)  # a manifest exists, so gc may sweep
    for video_id in placeholders:  # work for the long run: upgrades
        _text_file(client, bucket, video_id)
    _text_row(client, bucket, day, set(placeholders))
    long_run = plan.plan(config, date(2026, 3, 2), client, LOG)
    results = chunk.run_all(config, long_run, client, LOG)  # shards written, nothing committed yet
    assert long_run.chunks
    layout = Layout(ROOT)
    live = staging.live_runs(client, bucket, layout)
    assert list(live) == [long_run.run_id]
    swept = sweep.sweep(client, bucket, ROOT, "concat", older_than=timedelta(0))
    assert not swept.orphans  # the live run's shards are kept
    assert staging.sweep(client, bucket, layout) == 0
    summary = commit.commit(config, long_run, results, client)  # the long run commits: every pointer resolves
    assert summary.strategies["concat"].counts == {"success_full": len(placeholders)}
    _agree(client, bucket)  # (a dead run's objects are swept: test_stages)


def test_verify_and_the_check_catch_a_hand_made_disagreement(client, bucket, tmp_path):
    _seed(client, bucket)
    config = _config(bucket, tmp_path)
    pipeline.run(config, date(2026, 3, 1), client=client)
    state = read_state("concat", bucket=bucket, root=ROOT, client=client)
    fused = state[state["status"] == "success_full"].iloc[0]
    rows = pa.Table.from_pandas(state, preserve_index=False).to_pandas()
    published = checks.load_published(client, bucket, ROOT, "concat")
    broken = rows.copy()
    broken.loc[broken["video_id"] == fused["video_id"], "vector_id"] = "elsewhere#0"
    assert checks.disagreements(broken, published.manifest)[0]["video_id"] == fused["video_id"]
    assert checks.disagreements(rows, published.manifest) == []
    passed, facts = checks.state_matches_manifest(client, published)
    assert passed and facts["videos_compared"] == len(state)
    from clipfarm_fusion.stores import lake
    from clipfarm_fusion.stores import state as state_module

    store = state_module.open_store(client, bucket, Layout(ROOT), "concat", tmp_path, 5)
    row = store.rows_for(pa.array([fused["video_id"]])).reset_index()
    row["status"] = "success_text_placeholder"
    store.commit(pa.Table.from_pandas(row, schema=state_module.SCHEMA, preserve_index=False), {})
    assert lake is not None
    passed, facts = checks.state_matches_manifest(
        client, checks.load_published(client, bucket, ROOT, "concat")
    )
    assert not passed and facts["disagreements"] == 1
    assert main(["verify", "--bucket", bucket, "--strategy", "concat"]) == 5


def _unannounced_text(client, bucket, tmp_path):
    """Placeholders fused, then their text files appear with no word from the text stage."""
    day, placeholders = _seed(client, bucket)
    config = _config(bucket, tmp_path)
    pipeline.run(config, date(2026, 3, 1), client=client)
    for video_id in placeholders:
        _text_file(client, bucket, video_id)
    quiet = pipeline.run(config, date(2026, 3, 2), client=client)
    assert quiet.strategies["concat"].delta == 0  # the daily run trusts the text stage's news
    return placeholders


def test_a_full_text_recheck_upgrades_text_the_text_stage_never_announced(client, bucket, tmp_path, capsys):
    placeholders = _unannounced_text(client, bucket, tmp_path)
    args = ["run", "--bucket", bucket, "--strategy", "concat", "--state-dir", str(tmp_path)]
    assert main([*args, "--run-date", "2026-03-03", "--recheck-text"]) == 0
    assert f"text_files_listed={len(placeholders) * 2}" in capsys.readouterr().out  # every text file
    state = read_state("concat", bucket=bucket, root=ROOT, client=client).set_index("video_id")
    assert (state.loc[placeholders, "status"] == "success_full").all()
    _agree(client, bucket)


def test_the_text_recheck_job_and_its_weekly_schedule(client, bucket, tmp_path):
    from datetime import UTC, datetime

    from dagster import DefaultScheduleStatus, build_schedule_context, materialize

    from clipfarm_fusion.defs.assets import fuse_embeddings
    from clipfarm_fusion.defs.definitions import defs
    from clipfarm_fusion.defs.ops import RECHECK_TEXT_TAG
    from clipfarm_fusion.defs.resources import FusionResource

    placeholders = _unannounced_text(client, bucket, tmp_path)
    job = defs.resolve_job_def("text_recheck")
    assert job.tags[RECHECK_TEXT_TAG] == "true"
    schedule = defs.resolve_schedule_def("text_recheck_weekly")
    assert schedule.default_status == DefaultScheduleStatus.STOPPED and schedule.job_name == "text_recheck"
    tick = build_schedule_context(
        scheduled_execution_time=datetime(2026, 3, 8, 6, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    assert [r.partition_key for r in schedule.evaluate_tick(tick).run_requests] == ["2026-03-07"]
    resource = FusionResource(bucket=bucket, root=ROOT, state_dir=str(tmp_path), fetch_threads=4)
    result = materialize(
        [fuse_embeddings],
        partition_key="2026-03-03",
        resources={"fusion": resource},
        selection=["concat"],
        tags=dict(job.tags),
    )
    assert result.success
    state = read_state("concat", bucket=bucket, root=ROOT, client=client).set_index("video_id")
    assert (state.loc[placeholders, "status"] == "success_full").all()


def test_two_days_with_disjoint_videos_both_commit(client, bucket, tmp_path):
    """Case 2's last point: a state write since the plan is a conflict only for the videos it wrote. D+1
    plans its new videos; D, planned after the text arrived, upgrades yesterday's placeholders; both
    commit, in either order of commits."""
    day, placeholders = _seed(client, bucket)
    config = _config(bucket, tmp_path)
    pipeline.run(config, date(2026, 3, 1), client=client)
    later_day, later_objects = synthetic.make_day(
        6, dim=8, mix={"full": 1.0}, run_date=date(2026, 3, 2), prefix="new"
    )
    for suffix, body in later_objects.items():
        client.put_object(Bucket=bucket, Key=f"{ROOT}/{suffix}", Body=body)
    new_rows = pd.read_csv(io.BytesIO(later_day.metadata_csv))
    new_rows = new_rows[~new_rows["url"].str.endswith("?old")]  # captured on 03-02 only
    horizon = pd.concat([pd.read_csv(io.BytesIO(day.metadata_csv)), new_rows])
    client.put_object(
        Bucket=bucket, Key=Layout(ROOT).metadata_key(), Body=horizon.to_csv(index=False).encode()
    )
    later = plan.plan(config, date(2026, 3, 2), client, LOG)
    for video_id in placeholders:
        _text_file(client, bucket, video_id)
    _text_row(client, bucket, day, set(placeholders))
    rows = _text_rows(day, set(placeholders), "2026-03-11T00:00:00+00:00")
    rows += [(v, _hash(later_day, v), "2026-03-02T00:00:00+00:00", "success", None) for v in later_day.cases]
    client.put_object(Bucket=bucket, Key=Layout(ROOT).text_state_key(), Body=synthetic.text_state_db(rows))
    earlier = plan.plan(config, date(2026, 3, 1), client, LOG)
    assert later.strategies[0].delta == len(later_day.cases) and earlier.strategies[0].delta == len(
        placeholders
    )
    later_results = chunk.run_all(config, later, client, LOG)
    earlier_results = chunk.run_all(config, earlier, client, LOG)
    first = commit.commit(config, later, later_results, client)
    second = commit.commit(config, earlier, earlier_results, client)
    assert not first.conflicts and not second.conflicts
    assert first.strategies["concat"].counts == {"success_full": len(later_day.cases)}
    assert second.strategies["concat"].counts == {"success_full": len(placeholders)}
    _agree(client, bucket)


def test_a_backfill_does_not_spend_a_retry_a_later_run_spent(client, bucket, tmp_path):
    """Case 5, retries: a broken video failed at 03-05 (retry 1); a backfill of 03-02 leaves it (and its
    retry) alone; the next daily run retries it (retry 2)."""
    day, objects = synthetic.make_day(6, dim=8, mix={"full": 0.5, "corrupt_nan": 0.5})
    synthetic.seed(client, bucket, ROOT, day, objects, threads=4)
    broken = sorted(v for v, case in day.cases.items() if case == "corrupt_nan")
    config = _config(bucket, tmp_path)

    def retries() -> list[int]:
        state = read_state("concat", bucket=bucket, root=ROOT, client=client).set_index("video_id")
        return state.loc[broken, "retry_count"].tolist()

    pipeline.run(config, date(2026, 3, 5), client=client)
    assert retries() == [1] * len(broken)
    backfill = pipeline.run(config, date(2026, 3, 2), client=client)
    assert backfill.strategies["concat"].behind == "2026-03-05"
    assert retries() == [1] * len(broken)
    pipeline.run(config, date(2026, 3, 6), client=client)
    assert retries() == [2] * len(broken)
