"""Shard checks: each shard a manifest points into, fetched once and judged row by row, and the tally of
what was found. `manifest_pointers_resolve` (the Dagster asset check, over a day's shards and a sample)
and `verify_strategy` (over every shard) both walk shards with these, so both find the same faults.

There is one read side, `readback`: shards are walked by `map_shards`, each fetched with one GET by
`fetch_shard` and its pointers judged by `pointer_problem`, as `read_vectors`, `inspect` and `export`
do. Unlike those readers, a check never stops at the first broken shard: it reports every one. A LIST
of a shard prefix (one request per 1000 keys) finds deleted shards without a GET.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import botocore.exceptions
import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.core.layout import part_number
from clipfarm_fusion.read.vectors import FetchedShard, fetch_shard, map_shards, pointer_problem
from clipfarm_fusion.stores import s3io

log = logging.getLogger(__name__)
MAX_REPORTED = 10
MISSING = "shard missing"


def shard_width(shard: FetchedShard) -> tuple[int | None, str | None]:
    """(vector width, None) for a shard that decodes to a 2-d `vectors`, else (None, what is wrong):
    a missing, corrupt or truncated shard is a finding of the check, never a crash of it."""
    if shard.missing:
        return None, "is missing"
    if shard.decode_error is not None:
        return None, _undecodable(shard.decode_error)
    vectors = shard.arrays["vectors"]
    if vectors.ndim != 2:
        return None, f"holds {vectors.ndim}-d vectors of shape {list(vectors.shape)}, expected (rows, width)"
    return int(vectors.shape[1]), None


def _undecodable(error: Exception) -> str:
    return f"does not decode ({type(error).__name__}: {error})"


class ShardCheck(NamedTuple):
    """One shard judged: the manifest rows that point into it, and why they do not all resolve (None:
    they all do). `missing` when the object does not exist."""

    key: str
    rows: int
    problem: str | None
    missing: bool = False


def check_shard(client, bucket: str, key: str, rows: pa.Table, absent: bool = False) -> ShardCheck:
    """GET `key` once (not at all when a LIST already showed it `absent`) and check every row of
    `rows` (the manifest rows pointing into it) by readback's pointer rule. Never raises for what the
    shard holds: a missing, unreadable or undecodable shard is the finding."""
    if absent:
        return ShardCheck(key, rows.num_rows, MISSING, True)
    try:
        shard = fetch_shard(client, bucket, key)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return ShardCheck(key, rows.num_rows, f"shard unreadable ({exc})")
    if shard.missing:
        return ShardCheck(key, rows.num_rows, MISSING, True)
    if shard.decode_error is not None:
        return ShardCheck(key, rows.num_rows, f"shard {_undecodable(shard.decode_error)}")
    return ShardCheck(
        key, rows.num_rows, pointer_problem(shard.arrays["video_ids"], shard.arrays["vectors"], rows)
    )


def check_shards(
    client,
    bucket: str,
    rows: pa.Table,
    threads: int,
    absent: Collection[str] = frozenset(),
    progress_every: int = 0,
    logger: logging.Logger | None = None,
) -> Iterator[ShardCheck]:
    """One `ShardCheck` per shard `rows` point into, in key order, `threads` shards at a time
    (`map_shards`, so memory holds at most `threads` shards whatever the number of shards).

    `absent`: keys a LIST has shown do not exist; they are reported missing without a GET. Every
    `progress_every` shards, a log line.
    """
    logger = logger or log
    total = len(shard_keys(rows))
    checks = map_shards(
        rows, threads, lambda key, _, shard_rows: check_shard(client, bucket, key, shard_rows, key in absent)
    )
    for done, check in enumerate(checks, start=1):
        if progress_every and (done % progress_every == 0 or done == total):
            logger.info("checked %d of %d shards", done, total)
        yield check


@dataclass
class PointerTally:
    """What `check_shards` found, added up; lists capped at `MAX_REPORTED` for reports and metadata."""

    shards_checked: int = 0
    rows_checked: int = 0
    missing: list[str] = field(default_factory=list)
    broken: list[ShardCheck] = field(default_factory=list)
    bad_pointers: int = 0  # rows in shards that do not resolve them all

    def add(self, check: ShardCheck) -> None:
        self.shards_checked += 1
        self.rows_checked += check.rows
        if check.problem is None:
            return
        self.bad_pointers += check.rows
        if check.missing:
            self.missing.append(check.key)
        else:
            self.broken.append(check)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.broken

    def first_bad_key(self) -> str | None:
        keys = [*self.missing, *(check.key for check in self.broken)]
        return min(keys) if keys else None

    def metadata(self) -> dict[str, object]:
        facts: dict[str, object] = {
            "shards_checked": self.shards_checked,
            "rows_checked": self.rows_checked,
            "bad_pointers": self.bad_pointers,
            "missing_shard_count": len(self.missing),
            "missing_shards": sorted(self.missing)[:MAX_REPORTED],
            "broken_shard_count": len(self.broken),
        }
        if self.broken:
            facts["broken_shards"] = [
                {"fused_key": check.key, "rows": check.rows, "problem": check.problem}
                for check in sorted(self.broken)[:MAX_REPORTED]
            ]
        return facts


def listed_and_absent(client, bucket: str, prefix: str, referenced: set[str]) -> tuple[set[str], set[str]]:
    """The shard keys under `prefix` (one LIST request per 1000 keys), and the `referenced` keys under
    `prefix` that are not among them: deleted shards, found without a GET."""
    listed = {key for key in s3io.list_keys(client, bucket, prefix) if part_number(key) is not None}
    return listed, {key for key in referenced if key.startswith(prefix) and key not in listed}


def shard_keys(table: pa.Table) -> set[str]:
    return set(pc.unique(table["fused_key"]).to_pylist()) if table.num_rows else set()
