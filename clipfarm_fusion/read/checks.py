"""Checks on what a strategy has published: schema lock vs output, manifest key uniqueness, manifest
pointers that load back from their shards, state vs manifest (I2), and a day's fail rate.

Plain functions returning a `Verdict` with plain-value metadata, so the Dagster asset checks, the CLI,
a script or a test can run them alike; `verify_strategy` (`read/verify.py`) builds its report from the
same findings. Each takes a `Published`, the manifest and lock read once for every check of a strategy.
Shards are read through `shard_checks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.core import policy
from clipfarm_fusion.core.kernels import FusionOptions, fused_dim
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import SchemaDriftError, StoreError
from clipfarm_fusion.read import tables
from clipfarm_fusion.read.shard_checks import (
    MAX_REPORTED,
    PointerTally,
    check_shards,
    listed_and_absent,
    shard_keys,
    shard_width,
)
from clipfarm_fusion.read.vectors import fetch_shard, latest_per_video, on_run_date, parse_run_date
from clipfarm_fusion.stores import manifest, schema_lock, state
from clipfarm_fusion.stores.schema_lock import SchemaLock

FAIL_RATE_THRESHOLD = 0.05  # the fail_rate check's default: the resource's fail_rate_threshold


class Verdict(NamedTuple):
    """(passed, metadata): metadata holds only ints, floats, strings and lists/dicts of them."""

    passed: bool
    metadata: dict[str, object]


@dataclass(frozen=True)
class Published:
    """A strategy's manifest and schema lock as they are on S3 now (None where absent)."""

    strategy: str
    bucket: str
    root: str
    manifest_key: str
    schema_key: str
    manifest: pa.Table | None
    lock: SchemaLock | None
    lock_problem: str | None


def load_published(client, bucket: str, root: str, strategy: str) -> Published:
    """Read the manifest and lock once for every check of a strategy."""
    root = root.strip("/")
    return published_with(
        client, bucket, root, strategy, tables.manifest_table(client, bucket, root, strategy)
    )


def published_with(client, bucket: str, root: str, strategy: str, table: pa.Table | None) -> Published:
    """`table` (the manifest, as the caller read it) and the lock, read now. An unparsable lock is a
    finding, not a crash, so the schema check can report it."""
    layout = Layout(root)
    manifest_key, schema_key = layout.manifest_table_key(strategy), layout.schema_key(strategy)
    try:
        lock, lock_problem = schema_lock.read(client, bucket, schema_key), None
    except (SchemaDriftError, StoreError) as exc:  # an unparsable lock is a finding
        lock, lock_problem = None, str(exc)
    return Published(strategy, bucket, root, manifest_key, schema_key, table, lock, lock_problem)


def _rows(published: Published) -> int:
    return 0 if published.manifest is None else published.manifest.num_rows


def lock_findings(published: Published) -> tuple[dict[str, object], list[str]]:
    """(facts, problems) of the lock against itself and the manifest's fused_dims; reads nothing."""
    rows = _rows(published)
    facts: dict[str, object] = {"manifest_rows": rows, "schema_key": published.schema_key}
    if published.lock_problem:
        return facts, [published.lock_problem]
    lock = published.lock
    if lock is None:
        return facts, ["manifest has rows but there is no schema.json"] if rows else []
    implied = (  # a projection's width is the artifact's, recorded in the lock itself
        lock.fused_dim
        if lock.projection_id
        else fused_dim(published.strategy, *lock.dims, FusionOptions(mask=lock.mask_appended))
    )
    allowed = {lock.fused_dim, *(int(old["fused_dim"]) for old in lock.history)}
    facts.update(locked_fused_dim=lock.fused_dim, allowed_fused_dims=sorted(allowed))
    problems = []
    if implied != lock.fused_dim:
        problems.append(f"schema.json fused_dim {lock.fused_dim} but its dims and mask imply {implied}")
    if rows:
        manifest_dims = sorted(pc.unique(published.manifest["fused_dim"]).to_pylist())
        facts["manifest_fused_dims"] = manifest_dims
        if unknown := sorted(set(manifest_dims) - allowed):
            problems.append(f"manifest rows with fused_dim {unknown}, which no schema.json version allows")
    return facts, problems


def schema_matches_output(client, published: Published) -> Verdict:
    """schema.json agrees with itself and with the output: every manifest fused_dim is the lock's (or one
    a deliberate `migrate-schema` left in the lock's history), and the newest shard is as wide as the
    manifest says its rows are."""
    facts, problems = lock_findings(published)
    if published.lock is not None and _rows(published):
        table = published.manifest
        newest = pc.max(table["fused_key"]).as_py()
        recorded = pc.unique(table.filter(pc.equal(table["fused_key"], newest))["fused_dim"]).to_pylist()
        facts["newest_shard"] = newest
        width, unreadable = shard_width(fetch_shard(client, published.bucket, newest))
        if unreadable:
            problems.append(f"newest shard {newest} {unreadable}")
        else:
            facts["newest_shard_width"] = width
            if recorded != [width]:
                problems.append(
                    f"newest shard {newest} has {width}-d vectors, its manifest rows say {recorded}"
                )
    if problems:
        facts["problem"] = "; ".join(problems)
    return Verdict(not problems, facts)


def manifest_keys_unique(published: Published) -> Verdict:
    """One manifest row per `(video_id, source_hash)` (the manifest columns (docs/contract.md)); duplicates mean a broken upsert."""
    rows = _rows(published)
    if rows == 0:
        return Verdict(True, {"manifest_rows": 0, "duplicate_keys": 0})
    counts = published.manifest.group_by(["video_id", "source_hash"]).aggregate([([], "count_all")])
    duplicated = counts.filter(pc.greater(counts["count_all"], 1))
    facts: dict[str, object] = {"manifest_rows": rows, "duplicate_keys": duplicated.num_rows}
    if duplicated.num_rows:
        facts["sample"] = duplicated.slice(0, MAX_REPORTED).select(["video_id", "source_hash"]).to_pylist()
    return Verdict(duplicated.num_rows == 0, facts)


def sample_rows(table: pa.Table, sample_size: int) -> pa.Table:
    """`sample_size` rows evenly spread over the table (all rows when it is smaller): deterministic,
    so a failing check fails again on rerun, and it reaches old and new shards alike."""
    if table.num_rows <= sample_size:
        return table
    if sample_size <= 0:
        return table.slice(0, 0)
    return table.take(np.linspace(0, table.num_rows - 1, sample_size).round().astype(np.int64))


def manifest_pointers_resolve(
    client,
    published: Published,
    sample_size: int,
    threads: int = 8,
    partition: date | str | None = None,
) -> Verdict:
    """Manifest rows load back from their shards: the shard exists and decodes, its row `shard_idx`
    holds the row's `video_id`, and it has `shard_n` rows of `fused_dim`-wide vectors.

    With a `partition` (the day a run just published): EVERY shard the manifest references under
    `date=<partition>/` is read (one GET each), after one LIST of that prefix has shown which exist, plus
    the shards of an evenly spread sample of `sample_size` older rows. Without one, only the sample.
    Every manifest row pointing into a shard that is read is checked, as that costs no request.
    """
    day = parse_run_date(partition)
    facts: dict[str, object] = {"partition": day.isoformat()} if day else {}
    if _rows(published) == 0:
        return Verdict(True, {**facts, **PointerTally().metadata(), "sampled_rows": 0})
    table = published.manifest
    absent: set[str] = set()
    day_keys: set[str] = set()
    older = table
    if day is not None:
        in_day = on_run_date(table, day)
        day_keys, older = shard_keys(table.filter(in_day)), table.filter(pc.invert(in_day))
        prefix = Layout(published.root).shard_prefix(published.strategy, day)
        listed, absent = listed_and_absent(client, published.bucket, prefix, day_keys)
        facts.update(partition_shards=len(day_keys), unreferenced_partition_shards=len(listed - day_keys))
    sampled = sample_rows(older, sample_size)
    sampled_keys = shard_keys(sampled)
    facts.update(sampled_rows=sampled.num_rows, sampled_shards=len(sampled_keys))
    wanted = pa.array(sorted(day_keys | sampled_keys), pa.string())
    rows = table.filter(pc.is_in(table["fused_key"], value_set=wanted))
    tally = PointerTally()
    for check in check_shards(client, published.bucket, rows, threads, absent):
        tally.add(check)
    facts.update(tally.metadata())
    return Verdict(tally.ok, facts)


def disagreements(state_rows: pd.DataFrame, manifest_rows: pa.Table) -> list[dict[str, object]]:
    """I2, pure: every video whose state says it is fused (`success_full`, `success_text_placeholder`)
    has, as the manifest's latest row for it (`latest_per_video`), a row with that
    fusion_status pointing at the same shard row (`artifact_key`, `vector_id`). One dict per video that
    disagrees: what the state says and what the manifest says."""
    fused = state_rows[state_rows["status"].isin([policy.SUCCESS_FULL, policy.SUCCESS_PLACEHOLDER])]
    if fused.empty:
        return []
    latest = latest_per_video(manifest_rows).select(["video_id", "fusion_status", "fused_key", "shard_idx"])
    rows = latest.to_pandas().set_index("video_id").reindex(fused["video_id"])
    pointer = rows["fused_key"].astype(object) + "#" + rows["shard_idx"].astype("Int64").astype(str)
    bad = (
        rows["fusion_status"].isna().to_numpy()
        | (rows["fusion_status"].to_numpy(dtype=object) != fused["status"].to_numpy(dtype=object))
        | (rows["fused_key"].to_numpy(dtype=object) != fused["artifact_key"].to_numpy(dtype=object))
        | (pointer.to_numpy(dtype=object) != fused["vector_id"].to_numpy(dtype=object))
    )
    return [
        {
            "video_id": video_id,
            "state": f"{status} at {vector_id}",
            "manifest": "no row" if pd.isna(m_status) else f"{m_status} at {m_pointer}",
        }
        for video_id, status, vector_id, m_status, m_pointer in zip(
            fused["video_id"][bad],
            fused["status"][bad],
            fused["vector_id"][bad],
            rows["fusion_status"][bad],
            pointer[bad],
            strict=True,
        )
    ]


def state_matches_manifest(client, published: Published, partition: str | None = None) -> Verdict:
    """`disagreements` between the strategy's published state and (whole) manifest; with `partition`,
    only for the videos that state or manifest place in that day's shards."""
    compared, found = disagreeing(client, published, published.manifest, partition)
    return Verdict(
        not found, {"videos_compared": compared, "disagreements": len(found), "sample": found[:MAX_REPORTED]}
    )


def disagreeing(
    client, published: Published, table: pa.Table | None, partition: str | None
) -> tuple[int, list[dict[str, object]]]:
    """(videos compared, their `disagreements`): the published state against `table` (a manifest, whole or
    a date's; None as empty), with `partition` only for the videos state or manifest place in that day."""
    rows = state.read_rows(client, published.bucket, Layout(published.root), published.strategy)
    table = table if table is not None else manifest.SCHEMA.empty_table()
    if partition:
        marker = f"/date={partition}/"
        in_day = set(rows.loc[rows["artifact_key"].fillna("").str.contains(marker, regex=False), "video_id"])
        in_day |= set(table.filter(pc.match_substring(table["fused_key"], marker))["video_id"].to_pylist())
        rows = rows[rows["video_id"].isin(in_day)]
    return len(rows), disagreements(rows, table)


def fail_rate(counts: Mapping[str, int], delta: int, threshold: float) -> Verdict:
    """Share of the day's delta that failed (`fail` + `fail_terminal`); passes while below `threshold`."""
    failed = counts.get(policy.FAIL, 0) + counts.get(policy.FAIL_TERMINAL, 0)
    rate = failed / delta if delta else 0.0
    return Verdict(
        rate < threshold,
        {"fail_rate": round(rate, 4), "failed": failed, "delta": delta, "threshold": threshold},
    )
