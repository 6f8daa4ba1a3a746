"""`verify_strategy`: every check over every shard of a strategy (or of one date), added up in a `Report`,
for `clipfarm-fusion verify` and the `verify_published` job.

The checks are `read/checks.py`'s and the shard walk is `read/shard_checks.py`'s, so `verify` and the
Dagster asset checks judge alike; this module only widens their scope to every shard and words the
outcome: report lines, metadata, and the error that makes the CLI exit 5.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.read.checks import disagreeing, lock_findings, manifest_keys_unique, published_with
from clipfarm_fusion.read.shard_checks import (
    MAX_REPORTED,
    PointerTally,
    check_shards,
    listed_and_absent,
    shard_keys,
)
from clipfarm_fusion.read.vectors import BrokenPointerError, filter_rows, load_manifest

log = logging.getLogger(__name__)


@dataclass
class Report:
    """`verify_strategy`'s findings for one strategy (and one date, or all)."""

    strategy: str
    bucket: str
    manifest_key: str
    day: date | None
    manifest_rows: int
    lock: dict[str, object]
    lock_problems: list[str]
    duplicate_keys: int
    duplicate_sample: list[dict[str, object]]
    shards_referenced: int
    shards_listed: int
    unreferenced_shards: int
    pointers: PointerTally
    disagreements: list[dict[str, object]] = field(default_factory=list)  # I2: state vs manifest

    @property
    def ok(self) -> bool:
        return (
            not self.lock_problems and not self.duplicate_keys and self.pointers.ok and not self.disagreements
        )

    def lines(self) -> list[str]:
        scope = f"date={self.day}" if self.day else "all dates"
        lock = (
            "schema lock: " + "; ".join(self.lock_problems)
            if self.lock_problems
            else f"schema lock: ok (fused_dim {self.lock.get('locked_fused_dim', '-')}, manifest "
            f"fused_dims {self.lock.get('manifest_fused_dims', [])})"
        )
        keys = (
            f"manifest keys: {self.duplicate_keys} (video_id, source_hash) keys have more than one row, "
            f"e.g. {self.duplicate_sample[:3]}"
            if self.duplicate_keys
            else "manifest keys: unique"
        )
        tally = self.pointers
        lines = [
            f"verify {self.strategy} s3://{self.bucket}/{self.manifest_key} ({scope}): "
            f"{self.manifest_rows} rows",
            f"  {lock}",
            f"  {keys}",
            f"  shards: {self.shards_referenced} referenced, {self.shards_listed} listed, "
            f"{tally.shards_checked} checked, {len(tally.missing)} missing, {len(tally.broken)} broken; "
            f"{tally.rows_checked} rows checked, {tally.bad_pointers} do not resolve",
        ]
        lines.append(
            f"  state vs manifest: {len(self.disagreements)} fused video(s) disagree, e.g. {self.disagreements[:3]}"
            if self.disagreements
            else "  state vs manifest: agree"
        )
        lines += [f"  missing: {key}" for key in sorted(tally.missing)[:MAX_REPORTED]]
        lines += [f"  broken: {check.key}: {check.problem}" for check in sorted(tally.broken)[:MAX_REPORTED]]
        hidden = max(len(tally.missing) - MAX_REPORTED, 0) + max(len(tally.broken) - MAX_REPORTED, 0)
        if hidden:
            lines.append(f"  ... and {hidden} more bad shard(s)")
        if self.unreferenced_shards:
            lines.append(
                f"  note: {self.unreferenced_shards} shard(s) no manifest row points to "
                "(orphans; `clipfarm-fusion gc` sweeps them)"
            )
        lines.append(f"verify {self.strategy}: {'OK' if self.ok else 'FAILED'}")
        return lines

    def failure(self) -> BrokenPointerError:
        """The error that makes the CLI exit 5, naming the first broken shard (or the manifest or lock)."""
        tally = self.pointers
        parts = [
            *([f"{len(tally.missing)} shard(s) missing"] if tally.missing else []),
            *([f"{len(tally.broken)} shard(s) broken"] if tally.broken else []),
            *([f"{tally.bad_pointers} manifest row(s) do not resolve"] if tally.bad_pointers else []),
            *([f"{self.duplicate_keys} duplicated manifest key(s)"] if self.duplicate_keys else []),
            *(
                [f"{len(self.disagreements)} fused video(s) where state and manifest disagree"]
                if self.disagreements
                else []
            ),
            *(self.lock_problems),
        ]
        key = tally.first_bad_key() or (
            self.lock.get("schema_key") if self.lock_problems else self.manifest_key
        )
        return BrokenPointerError(str(key), f"verify {self.strategy} failed: {'; '.join(parts)}")

    def metadata(self) -> dict[str, object]:
        facts: dict[str, object] = {
            "manifest_rows": self.manifest_rows,
            "shards_referenced": self.shards_referenced,
            "shards_listed": self.shards_listed,
            "unreferenced_shards": self.unreferenced_shards,
            "duplicate_keys": self.duplicate_keys,
            "state_disagreements": len(self.disagreements),
            **self.pointers.metadata(),
        }
        if self.day:
            facts["date"] = self.day.isoformat()
        if self.lock_problems:
            facts["lock_problem"] = "; ".join(self.lock_problems)
        return facts


def verify_strategy(
    client,
    bucket: str,
    root: str,
    strategy: str,
    day: date | None = None,
    threads: int = 8,
    progress_every: int = 100,
    logger: logging.Logger | None = None,
) -> Report:
    """Every check over every shard of a strategy (or of one date): the lock is readable and allows the
    manifest's fused_dims, the manifest keys are unique, every referenced shard exists (one LIST per 1000
    keys) and every row's pointer resolves (one GET per shard, `threads` at a time, shard by shard).

    Raises ConfigError when nothing has been published (no manifest) or the strategy is unknown.
    """
    root = root.strip("/")
    layout = Layout(root)
    whole = load_manifest(client, bucket, root, strategy)
    table = filter_rows(whole, day)
    published = published_with(client, bucket, root, strategy, table)
    lock_facts, lock_problems = lock_findings(published)
    _, unique = manifest_keys_unique(published)
    prefix = layout.shard_prefix(strategy, day) if day else f"{layout.strategy_prefix(strategy)}shards/"
    referenced = shard_keys(table)
    listed, absent = listed_and_absent(client, bucket, prefix, referenced)
    (logger or log).info(
        "verify %s: %d manifest rows in %d shards; %d shards listed under s3://%s/%s",
        strategy,
        table.num_rows,
        len(referenced),
        len(listed),
        bucket,
        prefix,
    )
    tally = PointerTally()
    for check in check_shards(client, bucket, table, threads, absent, progress_every, logger or log):
        tally.add(check)
    return Report(
        strategy=strategy,
        bucket=bucket,
        manifest_key=published.manifest_key,
        day=day,
        manifest_rows=table.num_rows,
        lock=lock_facts,
        lock_problems=lock_problems,
        duplicate_keys=int(unique["duplicate_keys"]),
        duplicate_sample=list(unique.get("sample", [])),
        shards_referenced=len(referenced),
        shards_listed=len(listed),
        unreferenced_shards=len(listed - referenced),
        pointers=tally,
        disagreements=disagreeing(client, published, whole, day.isoformat() if day else None)[1],
    )
