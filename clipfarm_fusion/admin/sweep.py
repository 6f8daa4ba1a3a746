"""Sweeping orphan shards: shards under `<root>/fused/<strategy>/shards/` that no manifest row points to.

Orphans come from a run that crashed after writing shards but before committing its manifest, from the
losing side of two concurrent writers, and from a rerun whose manifest upsert replaced the rows of an
earlier run's shards. Nothing reads them; they only cost storage.

The rules that make a sweep safe next to a run in progress:
- the LIST comes first and the manifest is read after it, so a shard that a manifest committed in
  between references is protected by that manifest;
- a shard any row of the committed manifest references is never deleted;
- a shard written since the oldest run still in progress began is never deleted, however long that run
  takes: a run writes its shards before it commits the manifest that points at them, and its staged
  objects say it is live (`staging.live_runs`); nor is one written since this sweep began;
- nor is a shard younger than the grace period (`older_than`, default 1 day, by S3's LastModified), a
  margin on top;
- no manifest at all means nothing has been committed (or a wrong bucket or root): nothing is swept.

Cost: one LIST per 1000 shards, one GET of the manifest, one DeleteObjects per 1000 orphans.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipfarm_fusion.core.layout import Layout, part_number
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import vectors
from clipfarm_fusion.run import staging
from clipfarm_fusion.stores import s3io

log = logging.getLogger(__name__)
DEFAULT_GRACE = timedelta(days=1)
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per request
_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """`30m`, `12h`, `1d`, `7d`, `2w`, `0s` -> a timedelta; ConfigError for anything else."""
    match = _AGE.match(str(text))
    if not match:
        raise ConfigError(f"not an age: {text!r}; use a whole number and a unit, e.g. 30m, 12h, 1d, 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def describe_age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class ShardObject:
    key: str
    size: int
    last_modified: datetime


@dataclass
class SweepResult:
    """One strategy's sweep: what was listed, what is an orphan, what was (or would be) deleted."""

    strategy: str
    bucket: str
    prefix: str
    older_than: timedelta
    dry_run: bool
    listed: int = 0
    referenced: int = 0
    orphans: list[ShardObject] = field(default_factory=list)  # old enough: deleted (or would be)
    young: list[ShardObject] = field(default_factory=list)  # unreferenced but within the grace period
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "key: code message" per failed delete

    @property
    def orphan_bytes(self) -> int:
        return sum(shard.size for shard in self.orphans)

    @property
    def bytes_freed(self) -> int:
        deleted = set(self.deleted)
        return sum(shard.size for shard in self.orphans if shard.key in deleted)

    def lines(self, max_keys: int = 50) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        count = len(self.orphans) if self.dry_run else len(self.deleted)
        size = self.orphan_bytes if self.dry_run else self.bytes_freed
        lines = [
            f"gc {self.strategy} s3://{self.bucket}/{self.prefix}: {self.listed} shards listed, "
            f"{self.referenced} referenced by the manifest, {len(self.orphans) + len(self.young)} unreferenced",
            f"  {verb} {count} orphan shard(s) older than {describe_age(self.older_than)}, "
            f"{size} bytes{' (dry run: nothing deleted)' if self.dry_run else ' freed'}",
        ]
        if self.young:
            lines.append(
                f"  kept {len(self.young)} unreferenced shard(s) younger than {describe_age(self.older_than)} "
                "(a run in progress may still commit them)"
            )
        shown = self.orphans if self.dry_run else [s for s in self.orphans if s.key in set(self.deleted)]
        lines += [f"  {verb}: {shard.key} ({shard.size} bytes)" for shard in shown[:max_keys]]
        if len(shown) > max_keys:
            lines.append(f"  ... and {len(shown) - max_keys} more")
        lines += [f"  failed to delete {error}" for error in self.errors[:max_keys]]
        return lines

    def metadata(self) -> dict[str, object]:
        return {
            "listed": self.listed,
            "referenced": self.referenced,
            "orphans": len(self.orphans),
            "kept_young": len(self.young),
            "deleted": len(self.deleted),
            "bytes_freed": self.bytes_freed,
            "orphan_bytes": self.orphan_bytes,
            "dry_run": self.dry_run,
            "orphan_keys": [shard.key for shard in self.orphans][:50],
            "errors": self.errors[:50],
        }


def list_shards(client, bucket: str, prefix: str) -> list[ShardObject]:
    """Every shard (`part-XXXX.npz`) under `prefix` with its size and LastModified; one LIST per 1000."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [
        ShardObject(item["Key"], int(item.get("Size", 0)), item["LastModified"])
        for page in pages
        for item in page.get("Contents", [])
        if part_number(item["Key"]) is not None
    ]


def delete_keys(client, bucket: str, keys: list[str]) -> tuple[list[str], list[str]]:
    """(deleted keys, "key: code message" per failure), in batches of `DELETE_BATCH` per request."""
    deleted: list[str] = []
    errors: list[str] = []
    for start in range(0, len(keys), DELETE_BATCH):
        batch = keys[start : start + DELETE_BATCH]
        response = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
        )
        failed = {error["Key"]: error for error in response.get("Errors", [])}
        errors += [
            f"{key}: {error.get('Code')} {error.get('Message', '')}".strip() for key, error in failed.items()
        ]
        deleted += [key for key in batch if key not in failed]
    return deleted, errors


def snapshot_pointers(client, bucket: str, layout: Layout, strategy: str) -> set[str]:
    """The shards that single-file manifests in the bucket point at: the dated snapshots under
    `snapshots/`, and a file at the seed-era `fused_manifest.parquet` path should one be there (one not
    imported yet, or one a user wrote there with --out). A trainer reading such a file keeps working
    until its snapshot is deleted; only the `fused_key` column of each is read."""
    keys = [
        k for k in s3io.list_keys(client, bucket, layout.snapshot_prefix(strategy)) if k.endswith(".parquet")
    ]
    fetched = s3io.get_many(client, bucket, [*keys, layout.manifest_key(strategy)], threads=8)
    pointers: set[str] = set()
    for key, got in fetched.items():
        if isinstance(got, Exception):
            raise got
        if got.body is None:
            continue
        try:
            column = pq.read_table(pa.BufferReader(got.body), columns=["fused_key"], use_threads=False)
        except (pa.ArrowException, KeyError, OSError, ValueError) as exc:
            raise ConfigError(
                f"s3://{bucket}/{key} is not a readable manifest snapshot ({exc}); nothing was swept. "
                "Delete it if it is not needed, then run gc again"
            ) from exc
        pointers |= set(pc.unique(column["fused_key"]).to_pylist())
    return pointers


def sweep(
    client,
    bucket: str,
    root: str,
    strategy: str,
    older_than: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    now: datetime | None = None,
    logger: logging.Logger | None = None,
) -> SweepResult:
    """Delete (or with `dry_run` only list) the strategy's orphan shards older than `older_than`.

    Raises ConfigError when the strategy has no manifest: with nothing committed there is no telling
    an orphan from a shard a first run is about to commit, so nothing is swept.
    """
    if older_than < timedelta(0):
        raise ConfigError(f"older_than must not be negative, got {older_than}")
    logger = logger or log
    root = root.strip("/")
    layout = Layout(root)
    prefix = f"{layout.strategy_prefix(strategy)}shards/"
    began = now or datetime.now(UTC)
    live = staging.live_runs(client, bucket, layout, began)
    listed = list_shards(client, bucket, prefix)  # LIST before the manifest: see the module docstring
    table = vectors.load_manifest(client, bucket, root, strategy)
    referenced = set(pc.unique(table["fused_key"]).to_pylist()) if table.num_rows else set()
    referenced |= snapshot_pointers(client, bucket, layout, strategy)
    # S3's LastModified has whole seconds: a shard of the same second as a live run's start is its own
    cutoff = min([began - older_than, *(start - timedelta(seconds=1) for start in live.values())])
    if live:
        logger.info(
            "gc %s: %d run(s) in progress; keeping every shard written since %s",
            strategy,
            len(live),
            min(live.values()),
        )
    result = SweepResult(strategy, bucket, prefix, older_than, dry_run, listed=len(listed))
    result.referenced = sum(shard.key in referenced for shard in listed)
    for shard in listed:
        if shard.key in referenced:
            continue
        (result.orphans if shard.last_modified <= cutoff else result.young).append(shard)
    if result.orphans and not dry_run:
        result.deleted, result.errors = delete_keys(client, bucket, [shard.key for shard in result.orphans])
    logger.info(
        "gc %s: %d shards listed, %d referenced, %d orphan(s) older than %s %s, %d younger kept",
        strategy,
        result.listed,
        result.referenced,
        len(result.orphans),
        describe_age(older_than),
        "found (dry run)" if dry_run else f"deleted ({len(result.deleted)} ok, {len(result.errors)} failed)",
        len(result.young),
    )
    return result
