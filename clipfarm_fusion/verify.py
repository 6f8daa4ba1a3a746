"""Checks on what a strategy has published: schema lock vs output, manifest key uniqueness, manifest
pointers that load back from their shards, and a day's fail rate.

Plain functions returning a `Verdict` with plain-value metadata, so the Dagster asset checks, a script
or a test can run them alike. Each check reads only what it needs: the manifest and lock once
(`read_published`), then at most a bounded sample of shards.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import manifest, policy, s3io, schema_lock, shards
from .errors import SchemaDriftError
from .fuse import FusionOptions, fused_dim
from .layout import Layout
from .schema_lock import SchemaLock

MAX_REPORTED = 10


class Verdict(NamedTuple):
    """(passed, metadata): metadata holds only ints, floats, strings and lists/dicts of them."""

    passed: bool
    metadata: dict[str, object]


@dataclass(frozen=True)
class Published:
    """A strategy's manifest and schema lock as they are on S3 now (None where absent)."""

    strategy: str
    bucket: str
    manifest_key: str
    schema_key: str
    manifest: pa.Table | None
    lock: SchemaLock | None
    lock_problem: str | None


def read_published(client, bucket: str, root: str, strategy: str) -> Published:
    """Read the manifest and lock once for every check of a strategy. An unparsable lock is a finding,
    not a crash, so the schema check can report it."""
    layout = Layout(root)
    manifest_key, schema_key = layout.manifest_key(strategy), layout.schema_key(strategy)
    table, _ = manifest.read(client, bucket, manifest_key)
    try:
        lock, lock_problem = schema_lock.read(client, bucket, schema_key), None
    except SchemaDriftError as exc:
        lock, lock_problem = None, str(exc)
    return Published(strategy, bucket, manifest_key, schema_key, table, lock, lock_problem)


def _rows(published: Published) -> int:
    return 0 if published.manifest is None else published.manifest.num_rows


def schema_matches_output(client, published: Published) -> Verdict:
    """schema.json agrees with itself and with the output: every manifest fused_dim is the lock's (or one
    a deliberate `migrate-schema` left in the lock's history), and the newest shard is as wide as the
    manifest says its rows are."""
    rows = _rows(published)
    facts: dict[str, object] = {"manifest_rows": rows, "schema_key": published.schema_key}
    if published.lock_problem:
        return Verdict(False, {**facts, "problem": published.lock_problem})
    lock = published.lock
    if lock is None:
        problem = None if rows == 0 else "manifest has rows but there is no schema.json"
        return Verdict(problem is None, {**facts, **({"problem": problem} if problem else {})})
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
        table = published.manifest
        manifest_dims = sorted(pc.unique(table["fused_dim"]).to_pylist())
        facts["manifest_fused_dims"] = manifest_dims
        if unknown := sorted(set(manifest_dims) - allowed):
            problems.append(f"manifest rows with fused_dim {unknown}, which no schema.json version allows")
        newest = pc.max(table["fused_key"]).as_py()
        recorded = pc.unique(table.filter(pc.equal(table["fused_key"], newest))["fused_dim"]).to_pylist()
        body = s3io.get_object(client, published.bucket, newest).body
        if body is None:
            problems.append(f"newest shard {newest} is missing")
        else:
            width = int(shards.decode(body)["vectors"].shape[1])
            facts.update(newest_shard=newest, newest_shard_width=width)
            if recorded != [width]:
                problems.append(
                    f"newest shard {newest} has {width}-d vectors, its manifest rows say {recorded}"
                )
    if problems:
        facts["problem"] = "; ".join(problems)
    return Verdict(not problems, facts)


def manifest_keys_unique(published: Published) -> Verdict:
    """One manifest row per `(video_id, source_hash)` (DESIGN §2); duplicates mean a broken upsert."""
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
    return table.take(np.linspace(0, table.num_rows - 1, sample_size).round().astype(np.int64))


def manifest_pointers_resolve(client, published: Published, sample_size: int, threads: int = 8) -> Verdict:
    """A sample of manifest rows load back from their shards: the shard exists and decodes, has
    `shard_n` rows, and row `shard_idx` holds this `video_id` with a `fused_dim`-wide vector."""
    if _rows(published) == 0:
        return Verdict(True, {"sampled_rows": 0, "shards_read": 0, "bad_pointers": 0})
    sample = sample_rows(published.manifest, sample_size).to_pylist()
    keys = sorted({row["fused_key"] for row in sample})
    bodies = s3io.get_many(client, published.bucket, keys, threads)
    loaded: dict[str, dict[str, np.ndarray] | str] = {}
    for key in keys:
        body = bodies[key]
        if body is None or isinstance(body, Exception):
            loaded[key] = "shard missing" if body is None else f"shard unreadable ({body})"
            continue
        try:
            loaded[key] = shards.decode(body)
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            loaded[key] = f"shard does not decode ({exc})"
    bad = [
        {
            "video_id": row["video_id"],
            "fused_key": row["fused_key"],
            "shard_idx": row["shard_idx"],
            "problem": problem,
        }
        for row in sample
        if (problem := _pointer_problem(row, loaded[row["fused_key"]]))
    ]
    facts: dict[str, object] = {
        "sampled_rows": len(sample),
        "shards_read": len(keys),
        "bad_pointers": len(bad),
    }
    if bad:
        facts["sample"] = bad[:MAX_REPORTED]
    return Verdict(not bad, facts)


def _pointer_problem(row: Mapping[str, object], shard: dict[str, np.ndarray] | str) -> str | None:
    if isinstance(shard, str):
        return shard
    ids, vectors = shard["video_ids"], shard["vectors"]
    index = int(row["shard_idx"])
    if len(ids) != row["shard_n"]:
        return f"shard has {len(ids)} rows, manifest says shard_n={row['shard_n']}"
    if not 0 <= index < len(ids):
        return f"shard_idx {index} out of range for {len(ids)} rows"
    if str(ids[index]) != row["video_id"]:
        return f"shard row {index} holds {str(ids[index])!r}"
    if vectors.shape[1] != row["fused_dim"]:
        return f"shard vectors are {vectors.shape[1]}-d, manifest says {row['fused_dim']}"
    return None


def fail_rate(counts: Mapping[str, int], delta: int, threshold: float) -> Verdict:
    """Share of the day's delta that failed (`fail` + `fail_terminal`); passes while below `threshold`."""
    failed = counts.get(policy.FAIL, 0) + counts.get(policy.FAIL_TERMINAL, 0)
    rate = failed / delta if delta else 0.0
    return Verdict(
        rate < threshold,
        {"fail_rate": round(rate, 4), "failed": failed, "delta": delta, "threshold": threshold},
    )
