"""Upgrading a bucket written by 0.2 or the seed-era script: its single-file manifest
(`fused/<s>/fused_manifest.parquet`) and SQLite state (`state/fusion_<s>.sqlite`, in S3 or only under
--state-dir) are imported once by the first run, with every pointer unchanged, and are never written."""

import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core import policy
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import package_data, synthetic
from clipfarm_fusion.legacy import retire
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.stores import manifest

from .test_pipeline import assert_every_pointer_resolves, snapshot

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")
DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)
STRATEGIES = ("concat", "sum_pool")
MIX = {"full": 0.6, "placeholder": 0.15, "corrupt_nan": 0.1, "missing_video": 0.1, "pending_status": 0.05}


def seed_era_state(frame: pd.DataFrame) -> bytes:
    """A state file as the seed-era script and 0.2 wrote it: sql/state.sql, one row per video."""
    connection = sqlite3.connect(":memory:")
    connection.executescript(package_data.state_ddl())
    connection.executemany(
        "INSERT INTO processed_items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None),
    )
    connection.commit()
    body = bytes(connection.serialize())
    connection.close()
    return body


def delete_prefix(client, bucket: str, prefix: str) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])


def make_seed_era(client, seeded, state_in_bucket: bool = True) -> dict:
    """Fuse day 1, then leave the bucket as 0.2 would have: the manifest as one parquet file, the state as
    a SQLite file (the S3 mirror, or only a working copy under --state-dir), no tables."""
    pipeline.run(seeded.config(strategies=STRATEGIES), DAY1)
    layout = Layout(seeded.root)
    published = {}
    for strategy in STRATEGIES:
        rows = read_manifest(strategy, bucket=seeded.bucket, root=seeded.root)
        items = read_state(strategy, bucket=seeded.bucket, root=seeded.root)
        published[strategy] = (rows, items)
        table = pa.Table.from_pandas(rows, schema=manifest.SCHEMA, preserve_index=False)
        client.put_object(
            Bucket=seeded.bucket, Key=layout.manifest_key(strategy), Body=manifest.encode(table)
        )
        body = seed_era_state(items)
        if state_in_bucket:
            client.put_object(Bucket=seeded.bucket, Key=layout.state_mirror_key(strategy), Body=body)
        else:
            path = Layout.state_path(seeded.state_dir, strategy)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        delete_prefix(client, seeded.bucket, layout.manifest_table_key(strategy) + "/")
        delete_prefix(client, seeded.bucket, layout.state_table_key(strategy) + "/")
    return published


def add_day(client, seeded, videos: int, prefix: str, run_date: date) -> synthetic.SyntheticDay:
    """Upstream appends a day: new embeddings, rows appended to the horizon, rows added to the text stage."""
    day, objects = synthetic.make_day(videos, run_date=run_date, seed=1, prefix=prefix, mix={"full": 1.0})
    layout = Layout(seeded.root)
    for key, body in objects.items():
        client.put_object(Bucket=seeded.bucket, Key=f"{seeded.root}/{key}", Body=body)
    seeded.objects.update(objects)
    _, _, rows = day.metadata_csv.partition(b"\n")
    current = client.get_object(Bucket=seeded.bucket, Key=layout.metadata_key())["Body"].read()
    metadata = current.rstrip(b"\n") + b"\n" + rows
    client.put_object(Bucket=seeded.bucket, Key=layout.metadata_key(), Body=metadata)
    old = sqlite3.connect(":memory:")
    old.deserialize(client.get_object(Bucket=seeded.bucket, Key=layout.text_state_key())["Body"].read())
    new = sqlite3.connect(":memory:")
    new.deserialize(day.text_state_sqlite)
    old.executemany(
        "INSERT INTO processed_items VALUES (?, ?, ?, ?, ?)", new.execute("SELECT * FROM processed_items")
    )
    old.commit()
    client.put_object(Bucket=seeded.bucket, Key=layout.text_state_key(), Body=bytes(old.serialize()))
    return day


def run_cli(seeded, run_date: date, state_dir: Path) -> subprocess.CompletedProcess:
    args = [CLI, "run", "--run-date", run_date.isoformat(), "--bucket", seeded.bucket, "--root", seeded.root]
    args += ["--state-dir", str(state_dir), "--strategy", ",".join(STRATEGIES)]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("state_in_bucket", [True, False], ids=["state-mirror-in-s3", "state-only-local"])
def test_seed_era_files_are_imported_once_and_continued(client, seed_day, state_in_bucket):
    seeded = seed_day(videos=40, mix=MIX, run_date=DAY1)
    published = make_seed_era(client, seeded, state_in_bucket)
    layout = Layout(seeded.root)
    keys = [layout.manifest_key(s) for s in STRATEGIES]
    keys += [layout.state_mirror_key(s) for s in STRATEGIES] if state_in_bucket else []
    old_objects = {key: snapshot(client, seeded.bucket)[key] for key in keys}
    for strategy in STRATEGIES:  # before the first run, the readers read the old files in place
        rows, items = published[strategy]
        pd.testing.assert_frame_equal(read_manifest(strategy, bucket=seeded.bucket, root=seeded.root), rows)
        if state_in_bucket:
            pd.testing.assert_frame_equal(read_state(strategy, bucket=seeded.bucket, root=seeded.root), items)

    new = add_day(client, seeded, videos=12, prefix="new", run_date=DAY2)
    upgraded = run_cli(seeded, DAY2, seeded.state_dir)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert "importing" in upgraded.stderr and "(once)" in upgraded.stderr

    for strategy in STRATEGIES:
        rows, items = published[strategy]
        after = read_manifest(strategy, bucket=seeded.bucket, root=seeded.root).set_index("video_id")
        before = rows.set_index("video_id")
        pd.testing.assert_frame_equal(
            after.loc[before.index].sort_index(), before.sort_index()
        )  # no pointer moved
        assert set(new.cases) <= set(after.index)
        assert_every_pointer_resolves(client, seeded, strategy)
        state = read_state(strategy, bucket=seeded.bucket, root=seeded.root).set_index("video_id")
        settled = items.set_index("video_id")
        settled = settled[settled["status"].isin([policy.SUCCESS_FULL, policy.SUCCESS_PLACEHOLDER])]
        pd.testing.assert_frame_equal(state.loc[settled.index].sort_index(), settled.sort_index())
        assert (state.loc[list(new.cases), "status"] == policy.SUCCESS_FULL).all()
        failing = items.set_index("video_id")
        failing = failing[failing["status"] == policy.FAIL]
        assert (
            state.loc[failing.index, "retry_count"] == failing["retry_count"] + 1
        ).all()  # continued, not reset
    now = snapshot(client, seeded.bucket)
    moved = {key: now.get(key + retire.IMPORTED_SUFFIX) for key in old_objects}
    assert moved == old_objects, "each old file moves, byte for byte, to its .imported name"
    assert not [key for key in old_objects if key in now], "nothing stale is left at an old path"
    local = Layout.state_path(seeded.state_dir, STRATEGIES[0])
    if not state_in_bucket:
        assert not local.exists() and local.with_name(local.name + retire.IMPORTED_SUFFIX).exists()
    assert layout.manifest_table_key("concat") + "/_delta_log/00000000000000000000.json" in now

    settled = run_cli(seeded, DAY2, seeded.state_dir)  # fills the cursors of the imported rows
    assert settled.returncode == 0, settled.stderr[-3000:]
    before = snapshot(client, seeded.bucket)
    rerun = run_cli(seeded, DAY2, seeded.state_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    written = {k for k, v in snapshot(client, seeded.bucket).items() if before.get(k) != v}
    assert written, "the failing items were retried"
    assert not [k for k in written if "/fused/" in k], (
        "a settled rerun fuses nothing and merges no manifest row"
    )
    assert "importing" not in rerun.stderr

    for strategy in STRATEGIES:  # the tables deleted on purpose: the next run starts afresh
        delete_prefix(client, seeded.bucket, layout.manifest_table_key(strategy) + "/")
        delete_prefix(client, seeded.bucket, layout.state_table_key(strategy) + "/")
    started = pd.Timestamp.now(tz="UTC")
    fresh = run_cli(seeded, DAY2, seeded.state_dir)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "importing" not in fresh.stderr, "a retired seed-era file is never imported again"
    state = read_state("concat", bucket=seeded.bucket, root=seeded.root)
    assert state["retry_count"].max() <= 1, "no seed-era retry count carried over"
    rows = read_manifest("concat", bucket=seeded.bucket, root=seeded.root)
    assert (pd.to_datetime(rows["fused_at"]) >= started.floor("s")).all(), "every vector fused afresh"


def test_a_seed_era_manifest_that_is_not_parquet_stops_before_anything_is_written(client, seed_day):
    seeded = seed_day(videos=20, mix={"full": 1.0}, run_date=DAY1)
    make_seed_era(client, seeded)
    key = Layout(seeded.root).manifest_key("concat")
    client.put_object(Bucket=seeded.bucket, Key=key, Body=b"PAR1 not a manifest PAR1")
    before = snapshot(client, seeded.bucket)
    result = run_cli(seeded, DAY1, seeded.state_dir)
    assert result.returncode == 7, result.stderr[-2000:]
    assert f"s3://{seeded.bucket}/{key}" in result.stderr and "not a readable fused manifest" in result.stderr
    assert snapshot(client, seeded.bucket) == before


def test_the_first_run_rechecks_only_placeholders_whose_text_stage_status_moved_on(client, seed_day):
    """With no text cursor yet (the first run after an upgrade), a placeholder is rechecked when the text
    stage no longer calls it terminal (its text has arrived since the last seed-era run): one text GET
    for that one, none for the placeholders still at `no_captions`."""
    from .test_pipeline import text_stage_processes

    seeded = seed_day(videos=40, mix={"full": 0.5, "placeholder": 0.5}, run_date=DAY1)
    make_seed_era(client, seeded)
    placeholders = [v for v, c in seeded.day.cases.items() if c == "placeholder"]
    arrived = placeholders[0]
    text = synthetic.npy_bytes(np.full(768, 0.25, np.float32))
    client.put_object(Bucket=seeded.bucket, Key=f"{seeded.root}/embeddings/text/{arrived}.npy", Body=text)
    seeded.objects[f"embeddings/text/{arrived}.npy"] = text
    text_stage_processes(
        client, seeded.bucket, arrived, status="success", processed_at="2026-02-01T00:00:00Z"
    )
    gets = []
    client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: gets.append(params["url_path"])
    )
    summary = pipeline.run(seeded.config(strategies=("concat",)), DAY1, client=client)
    assert [g for g in gets if "/embeddings/text/" in g] == [f"/{seeded.root}/embeddings/text/{arrived}.npy"]
    state = read_state("concat", bucket=seeded.bucket, root=seeded.root).set_index("video_id")
    assert state.loc[arrived, "status"] == policy.SUCCESS_FULL
    assert (state.loc[placeholders[1:], "status"] == policy.SUCCESS_PLACEHOLDER).all()
    assert summary.strategies["concat"].manifest_updated == 1
    assert_every_pointer_resolves(client, seeded, "concat")
