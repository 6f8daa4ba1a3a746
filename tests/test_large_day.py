"""Days far larger than a replaceWhere IN list can name: a new strategy's first day over a big horizon,
a re-fusion. delta-rs 1.6 overflows its stack (SIGSEGV, exit 139, no message) on an IN list of about
25,000 ids, so every upsert above `lake.REPLACE_MAX_IDS` ids must take another path, through the CLI and
through Dagster alike, and a native crash must never be silent."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.stores import lake, manifest, state, state_schema

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")
BIG = 300_000
DAY = 100_000


def _state_rows(ids: list[str], status: str, retry: int) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "video_id": ids,
            "source_hash": [f"{i:064x}" for i in range(n)],
            "processed_at": ["2026-03-01T00:00:00+00:00"] * n,
            "status": [status] * n,
            "error": [None] * n,
            "artifact_key": [None] * n,
            "vector_id": [None] * n,
            "retry_count": np.full(n, retry, np.int64),
            "captured_ns": np.arange(n, dtype=np.int64),
            "hash64": np.arange(n, dtype=np.int64),
            "run_id": ["r"] * n,
        },
        schema=state_schema.SCHEMA,
    )


def test_a_state_upsert_of_300k_ids_into_a_local_table_completes_and_keeps_every_row(tmp_path):
    ids = [f"vid{i:07d}" for i in np.random.default_rng(0).permutation(BIG)]
    store = state.StateStore(str(tmp_path / "state"), {}, None, "new state table")
    store.commit(_state_rows(ids, "fail", 1), {"text_cursor": "c1"})
    again = ids[: BIG // 2] + [f"new{i:07d}" for i in range(BIG // 2)]
    store.commit(_state_rows(again, "success_full", 0), {"text_cursor": "c2"})
    rows = lake.read_all(store.table).to_pandas().set_index("video_id")
    assert len(rows) == BIG + BIG // 2
    assert (rows.loc[again, "status"] == "success_full").all()
    untouched = rows.loc[ids[BIG // 2 :]]
    assert (untouched["status"] == "fail").all() and (untouched["retry_count"] == 1).all()
    assert lake.commit_metadata(store.table, ["text_cursor"])["text_cursor"] == "c2"


def _manifest_rows(ids: list[str], captured_at: str, key: str) -> pa.Table:
    n = len(ids)
    rows = {name: [""] * n for name in manifest.SCHEMA.names}
    rows.update(
        video_id=ids,
        captured_at=[captured_at] * n,
        source_hash=[f"{i:064x}" for i in range(n)],
        fused_key=[key] * n,
        shard_idx=np.arange(n, dtype=np.int32),
        shard_n=np.full(n, n, np.int32),
        fused_dim=np.full(n, 5, np.int32),
        text_present=np.ones(n, np.int8),
        retry_count_at_write=np.zeros(n, np.int32),
    )
    return pa.table(rows, schema=manifest.SCHEMA)


def test_a_manifest_upsert_of_300k_keys_into_a_local_table_completes_and_the_newest_commit_wins(tmp_path):
    ids = [f"vid{i:07d}" for i in range(BIG)]
    table = manifest.ManifestTable(str(tmp_path / "manifest"), {}, "concat", None, "new manifest table")
    assert table.commit(_manifest_rows(ids, "2026-03-01T00:00:00Z", "a/date=2026-03-01/part-0000.npz")) == (
        BIG,
        0,
    )
    newer = _manifest_rows(ids, "2026-03-02T00:00:00Z", "a/date=2026-03-02/part-0000.npz")
    older = _manifest_rows(ids, "2026-02-01T00:00:00Z", "a/date=2026-02-01/part-0000.npz")
    assert table.commit(newer) == (0, BIG)
    # I1: the newest commit wins, whatever the capture (no run commits an older capture over a newer one:
    # a run behind the newest never plans it, a concurrent one yields)
    assert table.commit(older) == (0, BIG)
    published = lake.read_all(table.table)
    assert published.num_rows == BIG
    assert set(published["fused_key"].to_pylist()) == {"a/date=2026-02-01/part-0000.npz"}


def _hundred_thousand_video_day(client, bucket: str, root: str) -> set[str]:
    """A horizon of DAY videos of which 500 have embeddings (tiny ones: the commits are under test, not
    the fetch); the other ids have none at all, so each gets a state row and no manifest row."""
    day, objects = synthetic.make_day(500, dim=8, mix={"full": 0.8, "placeholder": 0.2})
    synthetic.seed(client, bucket, root, day, objects, threads=16)
    horizon = pd.read_csv(io.BytesIO(day.metadata_csv))
    extra = pd.DataFrame(
        {
            "video_id": [f"bare{n:06d}" for n in range(DAY - 500)],
            "url": [synthetic.url_for(f"bare{n:06d}") for n in range(DAY - 500)],
            "captured_at": "2026-02-28T12:00:00+00:00",
        }
    )
    body = pd.concat([horizon, extra]).to_csv(index=False).encode()
    client.put_object(Bucket=bucket, Key=Layout(root).metadata_key(), Body=body)
    return {v for v, case in day.cases.items() if case in ("full", "placeholder")}


def _assert_complete(bucket: str, fusable: set[str]) -> None:
    items = read_state("concat", bucket=bucket)
    assert len(items) == DAY
    assert items["video_id"].is_unique
    bare = items[items["video_id"].str.startswith("bare")]
    assert len(bare) == DAY - 500
    assert bare["status"].isin(["missing_text_pending", "missing_required_modality"]).all()
    rows = read_manifest("concat", bucket=bucket)
    assert set(rows["video_id"]) == fusable


def test_a_day_of_100k_videos_runs_through_the_cli_with_exit_0_and_complete_tables(client, bucket, tmp_path):
    fusable = _hundred_thousand_video_day(client, bucket, "clipfarm")
    args = ["run", "--run-date", "2026-03-01", "--bucket", bucket, "--strategy", "concat"]
    result = subprocess.run(
        [CLI, *args, "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_complete(bucket, fusable)


def test_a_day_of_100k_videos_materializes_in_dagster_with_complete_tables(client, bucket, tmp_path):
    from dagster import materialize

    from clipfarm_fusion.defs.assets import fuse_embeddings
    from clipfarm_fusion.defs.resources import FusionResource

    fusable = _hundred_thousand_video_day(client, bucket, "clipfarm")
    result = materialize(
        [fuse_embeddings],
        selection=["concat"],
        partition_key="2026-03-01",
        resources={"fusion": FusionResource(bucket=bucket, state_dir=str(tmp_path / "state"))},
    )
    assert result.success
    _assert_complete(bucket, fusable)


def test_a_native_crash_in_the_cli_prints_a_python_stack():
    crash = "import ctypes; from clipfarm_fusion.cli import main as cli; cli.main = lambda: ctypes.string_at(0); cli.entry()"
    result = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60)
    assert result.returncode == -11
    assert "Fatal Python error: Segmentation fault" in result.stderr
    assert "in <lambda>" in result.stderr


@pytest.mark.parametrize("module", ["clipfarm_fusion.defs", "clipfarm_fusion.defs.definitions"])
def test_a_native_crash_in_a_dagster_process_prints_a_python_stack(module):
    crash = f"import ctypes, {module}; ctypes.string_at(0)"
    result = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=120)
    assert result.returncode == -11
    assert "Fatal Python error: Segmentation fault" in result.stderr
    assert 'File "<string>", line 1' in result.stderr
