"""The output checks on a strategy published by a real run, then corrupted one way at a time."""

from dataclasses import replace
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.read import checks, verify
from clipfarm_fusion.run import pipeline

from .conftest import replace_manifest
from .test_cli import cli

LAYOUT = Layout("clipfarm")


@pytest.fixture
def published(seed_day, client):
    """concat published for 2026-03-01 in shards of 8, and a way to re-read it after corrupting it."""
    seeded = seed_day(videos=30)
    pipeline.run(seeded.config(strategies=("concat",), shard_size=8), date(2026, 3, 1), client=client)
    return lambda: checks.load_published(client, seeded.bucket, "clipfarm", "concat")


def rewrite_manifest(client, outputs: checks.Published, table: pa.Table) -> None:
    replace_manifest(client, outputs.bucket, outputs.root, outputs.strategy, table)


def with_column(table: pa.Table, name: str, values: list) -> pa.Table:
    return table.set_column(
        table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type)
    )


def test_a_fresh_publication_passes_every_check(published, client):
    outputs = published()
    assert checks.schema_matches_output(client, outputs).passed
    assert checks.manifest_keys_unique(outputs).passed
    result = checks.manifest_pointers_resolve(client, outputs, sample_size=10)
    assert result.passed and result.metadata["sampled_rows"] == 10
    # every row of each sampled shard is checked: it costs no request
    assert result.metadata["shards_checked"] > 1 and result.metadata["rows_checked"] >= 10
    assert result.metadata["bad_pointers"] == 0 and result.metadata["missing_shards"] == []


def test_nothing_published_yet_passes(client, bucket):
    outputs = checks.load_published(client, bucket, "clipfarm", "concat")
    assert checks.schema_matches_output(client, outputs).passed
    assert checks.manifest_keys_unique(outputs).passed
    assert checks.manifest_pointers_resolve(client, outputs, sample_size=10).passed


def test_duplicated_manifest_key_fails_uniqueness(published, client):
    outputs = published()
    rewrite_manifest(client, outputs, pa.concat_tables([outputs.manifest, outputs.manifest.slice(0, 1)]))
    passed, metadata = checks.manifest_keys_unique(published())
    assert not passed and metadata["duplicate_keys"] == 1
    assert metadata["sample"][0]["video_id"] == outputs.manifest["video_id"][0].as_py()


def test_pointer_to_another_row_fails_pointer_check(published, client):
    outputs = published()
    shifted = [
        (i + 1) % n
        for i, n in zip(
            outputs.manifest["shard_idx"].to_pylist(), outputs.manifest["shard_n"].to_pylist(), strict=True
        )
    ]
    rewrite_manifest(client, outputs, with_column(outputs.manifest, "shard_idx", shifted))
    passed, metadata = checks.manifest_pointers_resolve(client, published(), sample_size=5)
    assert not passed and metadata["bad_pointers"] == metadata["rows_checked"] >= 5
    assert metadata["broken_shard_count"] == metadata["shards_checked"]
    assert "lead to another video" in metadata["broken_shards"][0]["problem"]


def test_pointer_to_a_missing_shard_fails(published, client):
    outputs = published()
    gone = pc.min(outputs.manifest["fused_key"]).as_py()
    client.delete_object(Bucket=outputs.bucket, Key=gone)
    passed, metadata = checks.manifest_pointers_resolve(client, published(), sample_size=100)
    assert not passed and metadata["missing_shards"] == [gone] and metadata["broken_shard_count"] == 0


def test_partition_check_reads_every_shard_of_the_day_whatever_the_sample(seed_day, client):
    """A sample of one row visits one shard; with the partition, every shard of the day is read (and
    listed), so the one deleted shard is found and named."""
    seeded = seed_day(videos=60)
    pipeline.run(seeded.config(strategies=("concat",), shard_size=4), date(2026, 3, 1), client=client)
    outputs = checks.load_published(client, seeded.bucket, "clipfarm", "concat")
    keys = sorted(set(outputs.manifest["fused_key"].to_pylist()))
    assert len(keys) >= 10
    sampled_key = checks.sample_rows(outputs.manifest, 1)["fused_key"][0].as_py()
    gone = next(key for key in reversed(keys) if key != sampled_key)
    client.delete_object(Bucket=seeded.bucket, Key=gone)
    blind = checks.manifest_pointers_resolve(client, outputs, sample_size=1)  # the old blind spot
    assert blind.passed and blind.metadata["shards_checked"] == 1

    passed, metadata = checks.manifest_pointers_resolve(
        client, outputs, sample_size=1, partition="2026-03-01"
    )
    assert not passed
    assert metadata["partition"] == "2026-03-01" and metadata["partition_shards"] == len(keys)
    assert metadata["shards_checked"] == len(keys) and metadata["missing_shards"] == [gone]
    assert metadata["rows_checked"] == outputs.manifest.num_rows
    assert (
        metadata["bad_pointers"]
        == outputs.manifest.filter(pc.equal(outputs.manifest["fused_key"], gone)).num_rows
    )
    # another day's partition reads none of these shards, only the sample of older rows
    other = checks.manifest_pointers_resolve(client, outputs, sample_size=1, partition=date(2026, 3, 2))
    assert other.metadata["partition_shards"] == 0 and other.metadata["shards_checked"] == 1


def test_verify_strategy_checks_every_shard_and_reports_each_problem(seed_day, client):
    seeded = seed_day(videos=60)
    pipeline.run(seeded.config(strategies=("concat",), shard_size=4), date(2026, 3, 1), client=client)
    report = verify.verify_strategy(client, seeded.bucket, "clipfarm", "concat", threads=4)
    assert report.ok, report.lines()
    assert report.pointers.shards_checked == report.shards_referenced == report.shards_listed >= 10
    assert report.pointers.rows_checked == report.manifest_rows
    assert report.lines()[-1] == "verify concat: OK"

    keys = sorted(set(read_published_keys(client, seeded.bucket)))
    client.delete_object(Bucket=seeded.bucket, Key=keys[0])
    body = client.get_object(Bucket=seeded.bucket, Key=keys[-1])["Body"].read()
    client.put_object(Bucket=seeded.bucket, Key=keys[-1], Body=body[: len(body) // 2])
    client.put_object(Bucket=seeded.bucket, Key=keys[0].replace("part-", "part-9"), Body=body)  # an orphan
    report = verify.verify_strategy(client, seeded.bucket, "clipfarm", "concat", day=date(2026, 3, 1))
    assert not report.ok and report.pointers.missing == [keys[0]]
    assert [check.key for check in report.pointers.broken] == [keys[-1]]
    assert "does not decode" in report.pointers.broken[0].problem
    assert report.unreferenced_shards == 1
    text = "\n".join(report.lines())
    assert f"missing: {keys[0]}" in text and f"broken: {keys[-1]}" in text and "FAILED" in text
    assert report.failure().key == keys[0]


def read_published_keys(client, bucket):
    return checks.load_published(client, bucket, "clipfarm", "concat").manifest["fused_key"].to_pylist()


def test_manifest_dim_the_lock_never_allowed_fails_schema_check(published, client):
    outputs = published()
    rewrite_manifest(
        client, outputs, with_column(outputs.manifest, "fused_dim", [7] * outputs.manifest.num_rows)
    )
    passed, metadata = checks.schema_matches_output(client, published())
    assert not passed and "[7]" in metadata["problem"]


def test_rows_from_before_a_migration_keep_passing(published, client):
    """migrate-schema keeps old rows and shards; the old lock in the history still vouches for them."""
    outputs = published()
    old = outputs.lock
    migrated = replace(
        old,
        video_dim=old.video_dim * 2,
        fused_dim=old.fused_dim + old.video_dim,
        history=({"fused_dim": old.fused_dim},),
    )
    client.put_object(Bucket=outputs.bucket, Key=outputs.schema_key, Body=migrated.to_json())
    assert checks.schema_matches_output(client, published()).passed


@pytest.mark.parametrize(
    "corrupt",
    [lambda body: np.random.default_rng(3).bytes(len(body)), lambda body: body[: len(body) // 2]],
    ids=["random_bytes", "truncated"],
)
def test_a_corrupt_newest_shard_fails_schema_check_naming_the_shard(published, client, corrupt):
    outputs = published()
    newest = pc.max(outputs.manifest["fused_key"]).as_py()
    body = client.get_object(Bucket=outputs.bucket, Key=newest)["Body"].read()
    client.put_object(Bucket=outputs.bucket, Key=newest, Body=corrupt(body))
    passed, metadata = checks.schema_matches_output(client, published())
    assert not passed and metadata["newest_shard"] == newest
    assert f"newest shard {newest} does not decode" in metadata["problem"]
    assert "newest_shard_width" not in metadata


def test_rows_without_a_lock_fail_schema_check(published, client):
    outputs = published()
    client.delete_object(Bucket=outputs.bucket, Key=outputs.schema_key)
    passed, metadata = checks.schema_matches_output(client, published())
    assert not passed and "no schema.json" in metadata["problem"]


def test_unparsable_lock_fails_schema_check(published, client):
    outputs = published()
    client.put_object(Bucket=outputs.bucket, Key=outputs.schema_key, Body=b"{not json")
    passed, metadata = checks.schema_matches_output(client, published())
    assert not passed and "not a valid schema lock" in metadata["problem"]


def test_fail_rate_counts_fail_and_fail_terminal_against_the_delta():
    counts = {"success_full": 90, "fail": 3, "fail_terminal": 2, "missing_text_pending": 5}
    assert checks.fail_rate(counts, 100, threshold=0.06).passed
    passed, metadata = checks.fail_rate(counts, 100, threshold=0.05)
    assert not passed and metadata == {"fail_rate": 0.05, "failed": 5, "delta": 100, "threshold": 0.05}
    assert checks.fail_rate({}, 0, threshold=0.05).passed


@pytest.fixture
def fused_day(seed_day, client):
    """concat and sum_pool published for 2026-03-01 in shards of 4 (about a dozen shards each)."""
    seeded = seed_day(videos=60)
    config = seeded.config(strategies=("concat", "sum_pool"), shard_size=4)
    pipeline.run(config, date(2026, 3, 1), client=client)
    keys = sorted(set(read_published_keys(client, seeded.bucket)))
    return seeded, keys


@pytest.mark.s3_backends
def test_verify_command_exit_0_on_a_good_bucket(fused_day):
    seeded, keys = fused_day
    result = cli("verify", "--strategy", "concat", "--bucket", seeded.bucket, "--progress-every", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "verify concat: OK"
    # the manifest is named by its table's prefix
    assert result.stdout.startswith(
        f"verify concat s3://{seeded.bucket}/clipfarm/fused/concat/manifest (all dates):"
    )
    assert (
        f"{len(keys)} referenced, {len(keys)} listed, {len(keys)} checked, 0 missing, 0 broken"
        in result.stdout
    )
    assert f"checked 5 of {len(keys)} shards" in result.stderr  # the progress log
    dated = cli(
        "verify", "--strategy", "sum_pool", "--date", "2026-03-01", env={"CLIPFARM_BUCKET": seeded.bucket}
    )
    assert dated.returncode == 0 and "(date=2026-03-01)" in dated.stdout
    empty_day = cli("verify", "--strategy", "concat", "--bucket", seeded.bucket, "--date", "2026-02-01")
    assert empty_day.returncode == 0 and "0 rows" in empty_day.stdout


@pytest.mark.s3_backends
def test_verify_command_exit_5_naming_a_deleted_shard(fused_day, client):
    seeded, keys = fused_day
    gone = keys[len(keys) // 2]
    client.delete_object(Bucket=seeded.bucket, Key=gone)
    result = cli("verify", "--strategy", "concat", "--bucket", seeded.bucket, "--threads", "3")
    assert result.returncode == 5, result.stderr
    assert f"missing: {gone}" in result.stdout and "verify concat: FAILED" in result.stdout
    assert gone in result.stderr and "1 shard(s) missing" in result.stderr
    # the other strategy is untouched
    assert cli("verify", "--strategy", "sum_pool", "--bucket", seeded.bucket).returncode == 0


@pytest.mark.parametrize(
    "corrupt",
    [lambda body: body[: len(body) // 2], lambda body: np.random.default_rng(5).bytes(len(body))],
    ids=["truncated", "random_bytes"],
)
def test_verify_command_exit_5_on_a_corrupt_shard(fused_day, client, corrupt):
    seeded, keys = fused_day
    bad = keys[1]
    body = client.get_object(Bucket=seeded.bucket, Key=bad)["Body"].read()
    client.put_object(Bucket=seeded.bucket, Key=bad, Body=corrupt(body))
    result = cli("verify", "--strategy", "concat", "--bucket", seeded.bucket)
    assert result.returncode == 5, result.stderr
    assert f"broken: {bad}: shard does not decode" in result.stdout and bad in result.stderr


def test_verify_command_exit_5_on_a_pointer_to_another_row(fused_day, client):
    seeded, keys = fused_day
    outputs = checks.load_published(client, seeded.bucket, "clipfarm", "concat")
    idx = outputs.manifest["shard_idx"].to_pylist()
    n = outputs.manifest["shard_n"].to_pylist()
    swapped = [(i + 1) % size if pos == 0 else i for pos, (i, size) in enumerate(zip(idx, n, strict=True))]
    rewrite_manifest(client, outputs, with_column(outputs.manifest, "shard_idx", swapped))
    result = cli("verify", "--strategy", "concat", "--bucket", seeded.bucket)
    assert result.returncode == 5 and "lead to another video" in result.stdout
    assert outputs.manifest["fused_key"][0].as_py() in result.stderr


def test_verify_command_exit_5_on_a_duplicated_key_naming_the_manifest_table(fused_day, client):
    seeded, _ = fused_day
    outputs = checks.load_published(client, seeded.bucket, "clipfarm", "concat")
    rewrite_manifest(client, outputs, pa.concat_tables([outputs.manifest, outputs.manifest.slice(0, 1)]))
    result = cli("verify", "--strategy", "concat", "--bucket", seeded.bucket)
    assert result.returncode == 5, result.stderr
    assert "manifest keys: 1 (video_id, source_hash) keys have more than one row" in result.stdout
    assert (
        "clipfarm/fused/concat/manifest: verify concat failed: 1 duplicated manifest key(s)" in result.stderr
    )


def test_verify_command_exit_2_without_a_manifest_or_bucket(bucket):
    result = cli("verify", "--strategy", "concat", "--bucket", bucket)
    assert (
        result.returncode == 2
        and f"s3://{bucket}/clipfarm/fused/concat/manifest does not exist" in result.stderr
    )
    assert cli("verify", "--strategy", "concat").returncode == 2
    assert cli("verify", "--strategy", "nope", "--bucket", bucket).returncode == 2


def test_verify_command_exit_5_on_an_unparsable_lock(fused_day, client):
    seeded, _ = fused_day
    key = LAYOUT.schema_key("concat")
    client.put_object(Bucket=seeded.bucket, Key=key, Body=b"{not json")
    result = cli("verify", "--strategy", "concat", "--bucket", seeded.bucket)
    assert result.returncode == 5 and "not a valid schema lock" in result.stdout
    assert key in result.stderr
