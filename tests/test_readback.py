"""Reading fused vectors back (`read_vectors`, `inspect`, `export`) from two fused days on a moto server."""

from __future__ import annotations

import argparse
import io
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import date
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from clipfarm_fusion.cli import main, reading
from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import tables
from clipfarm_fusion.read.failures import FAILED_OR_WAITING
from clipfarm_fusion.read.vectors import (
    BrokenPointerError,
    MissingVectorsWarning,
    latest_per_video,
    read_vectors,
)
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.stores import manifest, s3io
from tests.conftest import replace_manifest
from tests.test_pipeline import expected_vector

DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)
STRATEGY, ROOT, SHARD_SIZE = "concat", "clipfarm", 7
MIX = {"full": 0.8, "placeholder": 0.2}
RECAPTURED = "vid000001"  # fused on day 1, then again on day 2 under a new url (a second source_hash)


@dataclass
class TwoDays:
    """Day 1: 30 videos; day 2: 20 more and RECAPTURED again with a new video embedding. Shards of 7."""

    bucket: str
    day1_objects: dict[str, bytes]
    objects: dict[str, bytes]  # what is current: day 1 overlaid with day 2
    day1_ids: list[str]
    day2_ids: list[str]

    def expected(self, video_id: str, objects: dict[str, bytes] | None = None) -> np.ndarray:
        return expected_vector(SimpleNamespace(objects=objects or self.objects), STRATEGY, video_id)


@pytest.fixture(scope="module")
def two_days(s3_endpoint, tmp_path_factory) -> TwoDays:
    """Fused once for the module: the read tests only read, the corruption tests write under other roots."""
    client = s3io.make_client(8)
    bucket = "readback-two-days"
    config = FusionConfig(
        bucket=bucket,
        root=ROOT,
        strategies=(STRATEGY,),
        shard_size=SHARD_SIZE,
        state_dir=tmp_path_factory.mktemp("state"),
        fetch_threads=8,
    )
    first, first_objects = synthetic.make_day(30, run_date=DAY1, mix=MIX)
    synthetic.seed(client, bucket, ROOT, first, first_objects, threads=8)
    pipeline.run(config, DAY1, client=client)

    second, second_objects = synthetic.make_day(20, run_date=DAY2, mix=MIX, prefix="b", seed=1)
    new_video = np.random.default_rng(3).standard_normal(768).astype(np.float32)
    second_objects[f"embeddings/video/{RECAPTURED}.npy"] = synthetic.npy_bytes(new_video)
    synthetic.seed(client, bucket, ROOT, second, second_objects, threads=8)
    recaptured = f"{RECAPTURED},{synthetic.url_for(RECAPTURED)}?v2,2026-03-02T12:00:00Z,again,1\n"
    horizon = first.metadata_csv + second.metadata_csv.split(b"\n", 1)[1] + recaptured.encode()
    client.put_object(Bucket=bucket, Key=Layout(ROOT).metadata_key(), Body=horizon)
    pipeline.run(config, DAY2, client=client)
    return TwoDays(
        bucket,
        first_objects,
        {**first_objects, **second_objects},
        sorted(first.cases),
        sorted([*second.cases, RECAPTURED]),
    )


def manifest_of(client, two_days: TwoDays) -> pa.Table:
    table = tables.manifest_table(client, two_days.bucket, ROOT, STRATEGY)
    assert table is not None
    return table


def publish_broken_manifest(client, two_days: TwoDays, root: str, table: pa.Table) -> None:
    """A tampered copy of the manifest under another root; its fused_keys still point at the real shards."""
    replace_manifest(client, two_days.bucket, root, STRATEGY, table)


def replace_column(table: pa.Table, name: str, values: list) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(
        index, table.schema.field(index), pa.array(values, table.schema.field(index).type)
    )


def assert_bit_identical(two_days: TwoDays, ids: list[str], vectors: np.ndarray, objects=None) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (len(ids), 2305)
    for video_id, vector in zip(ids, vectors, strict=True):
        assert vector.tobytes() == two_days.expected(video_id, objects).tobytes(), video_id


def test_round_trip_over_several_shards_and_two_dates_is_bit_identical(client, two_days):
    ids, vectors, rows = read_vectors(STRATEGY, bucket=two_days.bucket, client=client)
    assert ids == sorted(set(two_days.day1_ids) | set(two_days.day2_ids))
    assert rows["video_id"].to_pylist() == ids
    assert rows.schema == manifest.SCHEMA
    assert pc.count_distinct(rows["fused_key"]).as_py() == 5 + 3
    assert_bit_identical(two_days, ids, vectors)


def test_a_video_with_two_source_hashes_reads_its_latest_row(client, two_days):
    assert manifest_of(client, two_days).filter(pc.equal(pc.field("video_id"), RECAPTURED)).num_rows == 2
    ids, vectors, rows = read_vectors(STRATEGY, [RECAPTURED], bucket=two_days.bucket, client=client)
    assert f"date={DAY2}" in rows["fused_key"][0].as_py()
    assert_bit_identical(two_days, ids, vectors)
    assert vectors[0].tobytes() != two_days.expected(RECAPTURED, two_days.day1_objects).tobytes()


def test_latest_is_judged_by_instant_not_by_how_captured_at_is_spelled():
    table = pa.table(
        {
            "video_id": ["a", "a", "a", "b"],
            "captured_at": ["2026-03-01T10:00:00Z", "2026-03-01T09:00:00-02:00", "", "2026-03-01"],
            "fused_key": ["k1", "k2", "k3", "k4"],
        }
    )
    assert latest_per_video(table)["fused_key"].to_pylist() == ["k2", "k4"]


def test_latest_compares_mixed_offsets_as_instants_and_breaks_ties_by_fused_key():
    table = pa.table(
        {
            "video_id": ["a", "a", "b", "b", "c", "c"],
            "captured_at": [
                "2026-03-01T10:00:00+02:00",  # 08:00Z
                "2026-03-01T09:00:00Z",
                "2026-03-01T08:00:00Z",
                "2026-03-01T10:00:00+02:00",  # the same instant: the larger fused_key wins
                "2026-03-01T08:00:00Z",
                "2026-03-01T10:00:00+02:00",
            ],
            "fused_key": ["k9", "k1", "k2", "k3", "k8", None],
        }
    )
    for ordered in (table, table.take(list(range(table.num_rows))[::-1])):
        assert latest_per_video(ordered)["fused_key"].to_pylist() == ["k1", "k3", "k8"]


def test_ids_come_back_in_the_requested_order_across_shards_and_dates(client, two_days):
    wanted = ["b000005", "vid000010", RECAPTURED, "b000000", "vid000029", "vid000010"]
    ids, vectors, rows = read_vectors(STRATEGY, wanted, bucket=two_days.bucket, client=client)
    assert ids == wanted and rows["video_id"].to_pylist() == wanted
    assert_bit_identical(two_days, ids, vectors)


def test_run_date_selects_the_rows_of_that_day(client, two_days):
    ids, vectors, rows = read_vectors(STRATEGY, run_date="2026-03-01", bucket=two_days.bucket, client=client)
    assert ids == two_days.day1_ids
    assert all(f"/date={DAY1}/" in key for key in rows["fused_key"].to_pylist())
    assert_bit_identical(two_days, ids, vectors, two_days.day1_objects)
    ids, _, _ = read_vectors(STRATEGY, run_date=DAY2, bucket=two_days.bucket, client=client)
    assert ids == two_days.day2_ids


def test_unknown_ids_are_left_out_and_reported_by_a_warning_that_carries_them(client, two_days):
    wanted = ["vid000003", "nope-1", "b000001", "nope-2"]
    with pytest.warns(MissingVectorsWarning, match="2 requested video_id") as caught:
        ids, vectors, _ = read_vectors(STRATEGY, wanted, bucket=two_days.bucket, client=client)
    assert ids == ["vid000003", "b000001"] and len(vectors) == 2
    assert caught[0].message.missing == ["nope-1", "nope-2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingVectorsWarning)
        with pytest.raises(MissingVectorsWarning) as raised:
            read_vectors(STRATEGY, ["b000001"], run_date=DAY1, bucket=two_days.bucket, client=client)
    assert raised.value.missing == ["b000001"]
    with pytest.warns(MissingVectorsWarning):
        ids, vectors, rows = read_vectors(STRATEGY, ["nope"], bucket=two_days.bucket, client=client)
    assert ids == [] and vectors.shape == (0, 0) and rows.num_rows == 0


def test_each_shard_is_fetched_with_one_get(two_days):
    """Counted on the boto3 client, which fetches the shards and the lock (one GET of schema.json, to
    keep the current lock's rows); the manifest table is read by delta-rs, and with a table published
    no seed-era fused_manifest.parquet is asked for."""
    client = s3io.make_client(8)
    fetched: Counter = Counter()
    client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: fetched.update([params["Key"]])
    )
    _, _, rows = read_vectors(STRATEGY, bucket=two_days.bucket, client=client, threads=4)
    shard_keys = set(rows["fused_key"].to_pylist())
    lock_key = Layout("clipfarm").schema_key(STRATEGY)
    assert len(shard_keys) == 5 + 3 and fetched == Counter(shard_keys) + Counter([lock_key])

    fetched.clear()
    read_vectors(
        STRATEGY,
        ["vid000000", "vid000001", "vid000002"],
        run_date=DAY1,
        bucket=two_days.bucket,
        client=client,
    )
    shards_read = {key: n for key, n in fetched.items() if key != lock_key}
    assert fetched[lock_key] == 1 and list(shards_read.values()) == [1], (
        "three ids of one shard: that shard, once"
    )


def test_a_pointer_to_a_missing_shard_raises_naming_the_key(client, two_days):
    table = manifest_of(client, two_days)
    victim = table["fused_key"][0].as_py()
    gone = victim.replace("part-", "part-9")
    keys = [gone if key == victim else key for key in table["fused_key"].to_pylist()]
    publish_broken_manifest(client, two_days, "broken-missing", replace_column(table, "fused_key", keys))
    with pytest.raises(BrokenPointerError, match="shard missing") as raised:
        read_vectors(STRATEGY, bucket=two_days.bucket, root="broken-missing", client=client)
    assert raised.value.key == gone and gone in str(raised.value)


def test_a_pointer_to_another_video_raises_naming_the_key(client, two_days):
    table = manifest_of(client, two_days)
    index = table["shard_idx"].to_pylist()
    index[0], index[1] = index[1], index[0]
    publish_broken_manifest(client, two_days, "broken-swapped", replace_column(table, "shard_idx", index))
    with pytest.raises(BrokenPointerError, match="another video") as raised:
        read_vectors(STRATEGY, bucket=two_days.bucket, root="broken-swapped", client=client)
    assert raised.value.key in {table["fused_key"][0].as_py(), table["fused_key"][1].as_py()}


def test_rows_of_different_widths_need_a_fused_dim_or_date_choice(client, two_days):
    """After migrate-schema, older rows keep their width: stacking them with newer ones is refused."""
    table = manifest_of(client, two_days)
    day1 = pc.match_substring(table["fused_key"], f"/date={DAY1}/").to_pylist()
    dims = [769 if old else dim for old, dim in zip(day1, table["fused_dim"].to_pylist(), strict=True)]
    publish_broken_manifest(client, two_days, "migrated", replace_column(table, "fused_dim", dims))
    with pytest.raises(ConfigError, match=r"different widths \[769, 2305\].*fused_dim="):
        read_vectors(STRATEGY, bucket=two_days.bucket, root="migrated", client=client)
    ids, vectors, _ = read_vectors(
        STRATEGY, bucket=two_days.bucket, root="migrated", client=client, fused_dim=2305
    )
    assert ids == two_days.day2_ids
    assert_bit_identical(two_days, ids, vectors)


def test_config_errors_say_what_to_do(client, two_days, monkeypatch):
    monkeypatch.delenv("CLIPFARM_BUCKET", raising=False)
    with pytest.raises(ConfigError, match="CLIPFARM_BUCKET"):
        read_vectors(STRATEGY, client=client)
    with pytest.raises(
        ConfigError,
        match=r"s3://readback-two-days/nowhere/fused/concat/manifest does not exist.*clipfarm-fusion run",
    ):
        read_vectors(STRATEGY, bucket=two_days.bucket, root="nowhere", client=client)
    with pytest.raises(ConfigError, match="a list of ids"):
        read_vectors(STRATEGY, "vid000001", bucket=two_days.bucket, client=client)
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        read_vectors(STRATEGY, run_date="March 1", bucket=two_days.bucket, client=client)


def parse(*argv: str) -> argparse.Namespace:
    return main.build_parser().parse_args(argv)


def test_inspect_prints_lock_totals_and_each_id(client, two_days, capsys):
    ids = ("--video-id", RECAPTURED, "nope", "--video-id", "b000004")
    code = main.main(["inspect", "--strategy", STRATEGY, "--bucket", two_days.bucket, *ids])
    out = capsys.readouterr().out
    assert code == 0
    assert "fused_dim=2305 mask_appended=True" in out and "history: 0 earlier lock(s)" in out
    assert "51 rows, 50 videos" in out
    table = manifest_of(client, two_days)
    for status, count in Counter(table["fusion_status"].to_pylist()).items():
        assert f"{status:<28} {count:>8}" in out
    assert f"{DAY1}        30 rows      5 shards  fused_dim [2305]" in out
    assert f"{DAY2}        21 rows      3 shards  fused_dim [2305]" in out
    lines = out.split("video_ids:\n")[1].splitlines()
    assert [line.split()[0] for line in lines] == [RECAPTURED, "nope", "b000004"]
    _, vectors, rows = read_vectors(STRATEGY, [RECAPTURED], bucket=two_days.bucket, client=client)
    row, vector = rows.to_pylist()[0], vectors[0].astype(np.float64)
    assert (
        f"{row['fused_key']}#{row['shard_idx']}  success_full  source_hash {row['source_hash']}" in lines[0]
    )
    assert f"dim 2305  norm {np.linalg.norm(vector):.6g}  min {vector.min():.6g}" in lines[0]
    assert "(latest of 2 rows)  lock " in lines[0]
    assert lines[1].strip() == "nope  not in manifest"
    # the manifest is named by where it lives: the table's prefix, not the seed-era single file
    assert f"manifest s3://{two_days.bucket}/{ROOT}/fused/{STRATEGY}/manifest:" in out


def test_inspect_without_a_manifest_exits_2_naming_the_key(two_days, capsys):
    assert main.main(["inspect", "--strategy", STRATEGY, "--bucket", two_days.bucket, "--root", "empty"]) == 2
    err = capsys.readouterr().err
    assert f"s3://{two_days.bucket}/empty/fused/concat/manifest does not exist" in err
    assert "clipfarm-fusion run" in err


def test_export_parquet_holds_what_read_vectors_returns(client, two_days, tmp_path, capsys):
    out = tmp_path / "concat.parquet"
    assert main.main(["export", "--strategy", STRATEGY, "--bucket", two_days.bucket, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"exported 50 concat vectors (2305-d) to {out}"
    exported = pq.read_table(out).sort_by("video_id")
    assert exported.schema.field("vector").type == pa.list_(pa.float32(), 2305)
    ids, vectors, rows = read_vectors(STRATEGY, bucket=two_days.bucket, client=client)
    assert exported.select(manifest.SCHEMA.names).equals(rows)
    flat = exported["vector"].combine_chunks().flatten().to_numpy()
    assert flat.reshape(-1, 2305).tobytes() == vectors.tobytes()


def test_export_npy_of_one_date_loads_without_pickle_and_matches(client, two_days, tmp_path):
    out = tmp_path / "day1.npy"
    argv = (
        "export",
        "--strategy",
        STRATEGY,
        "--bucket",
        two_days.bucket,
        "--date",
        str(DAY1),
        "--out",
        str(out),
    )
    assert main.main(list(argv)) == 0
    records = np.load(out, allow_pickle=False)
    records = records[np.argsort(records["video_id"])]
    ids, vectors, rows = read_vectors(STRATEGY, run_date=DAY1, bucket=two_days.bucket, client=client)
    assert records["video_id"].tolist() == ids
    assert records["vector"].dtype == np.float32 and records["vector"].tobytes() == vectors.tobytes()
    assert records["shard_idx"].tolist() == rows["shard_idx"].to_pylist()
    assert records["fused_key"].tolist() == rows["fused_key"].to_pylist()
    assert records["text_emb_key"].tolist() == [key or "" for key in rows["text_emb_key"].to_pylist()]
    assert not list(tmp_path.glob("*.partial"))


FAILING_MIX = {"full": 0.2, "corrupt_nan": 0.35, "pending_status": 0.3, "missing_audio": 0.15}


def failed_listing(bucket: str, day: date | None, capsys, *flags: str) -> str:
    argv = ["inspect", "--strategy", STRATEGY, "--bucket", bucket, "--failed", *flags]
    assert main.main(argv + (["--date", str(day)] if day else [])) == 0
    return capsys.readouterr().out


def test_inspect_failed_lists_every_failed_and_waiting_item_of_a_day_with_its_error(
    client, bucket, tmp_path, capsys
):
    """More than the summary's 10 samples per status: every item, as a table and as CSV. While a day is
    the newest fused, its list is exactly what its summary counts, the items still waiting since the
    day before included; a failure retried later is the later day's."""
    config = FusionConfig(bucket=bucket, strategies=(STRATEGY,), state_dir=tmp_path, fetch_threads=8)
    first, first_objects = synthetic.make_day(40, run_date=DAY1, mix=FAILING_MIX)
    synthetic.add_day(client, bucket, ROOT, first, first_objects, threads=8)
    day_one = pipeline.run(config, DAY1, client=client).strategies[STRATEGY]
    second, second_objects = synthetic.make_day(
        10, run_date=DAY2, prefix="b", older_captures=False, mix={"full": 0.5, "corrupt_2d": 0.5}
    )
    synthetic.add_day(client, bucket, ROOT, second, second_objects, threads=8)
    day_two = pipeline.run(config, DAY2, client=client).strategies[STRATEGY]

    waiting = {s: n for s, n in day_two.counts.items() if s in FAILED_OR_WAITING}
    assert waiting["fail"] > 10 and waiting["missing_text_pending"] > 10  # beyond the summary's samples
    listed = pd.read_csv(io.StringIO(failed_listing(bucket, DAY2, capsys, "--csv")), keep_default_na=False)
    assert list(listed.columns) == ["video_id", "status", "error", "retry_count", "run_date", "processed_at"]
    assert listed["status"].value_counts().to_dict() == waiting
    assert listed["video_id"].is_unique and all(listed["error"].str.len() > 0)
    expected = {
        video_id: status
        for day in (first, second)
        for video_id, status in day.expected_status().items()
        if status in FAILED_OR_WAITING
    }
    assert dict(zip(listed["video_id"], listed["status"], strict=True)) == expected
    retried = listed[listed["video_id"].str.startswith("vid") & (listed["status"] == "fail")]
    assert set(retried["retry_count"]) == {2} and set(retried["run_date"]) == {str(DAY2)}
    assert "non-finite values" in retried["error"].iloc[0]

    table = failed_listing(bucket, DAY2, capsys)
    assert f"failed or waiting {STRATEGY} items of date={DAY2}, from the state s3://{bucket}/" in table
    for row in listed.itertuples():
        assert re.search(
            rf"^  {re.escape(row.video_id)} +{row.status} +{row.retry_count} +{row.run_date}  "
            rf"{re.escape(row.error)}$",
            table,
            re.M,
        ), row.video_id
    assert ", ".join(f"{s} {n}" for s, n in listed["status"].value_counts(sort=False).items()) in table
    # Day one now: its items still waiting; its failures were retried on day two, so they are day two's.
    older = pd.read_csv(io.StringIO(failed_listing(bucket, DAY1, capsys, "--csv")), keep_default_na=False)
    pending = {v for v, case in first.cases.items() if case in ("pending_status", "missing_audio")}
    assert set(older["video_id"]) == pending and day_one.counts["fail"] == waiting["fail"] - 5
    everything = pd.read_csv(
        io.StringIO(failed_listing(bucket, None, capsys, "--csv")), keep_default_na=False
    )
    assert everything.equals(listed)


def test_export_to_another_suffix_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "vectors.csv"
    assert main.main(["export", "--strategy", STRATEGY, "--bucket", "any", "--out", str(out)]) == 2
    assert "use PATH.parquet or PATH.npy" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", reading.COMMANDS)
def test_every_command_has_full_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        parse(command, "--help")
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    assert "Exit codes" in out and "--strategy {concat," in out and "$CLIPFARM_BUCKET" in out
