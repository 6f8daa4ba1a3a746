"""Checks on what a strategy has published: schema lock vs output, manifest key uniqueness, manifest
pointers that load back from their shards, and a day's fail rate; and `verify_strategy`, all of them over
every shard, for `clipfarm-fusion verify` and the `verify_published` job.

Plain functions returning a `Verdict` (or a `Report`) with plain-value metadata, so the Dagster asset
checks, the CLI, a script or a test can run them alike. There is one read side, `readback`: shards are
walked by `map_shards`, each fetched with one GET by `fetch_shard` and its pointers
judged by `pointer_problem`, as `read_vectors`, `inspect` and `export` do. Unlike those
readers, a check never stops at the first broken shard: it reports every one. A LIST of a shard prefix
(one request per 1000 keys) finds deleted shards without a GET.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

import botocore.exceptions
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.core import policy
from clipfarm_fusion.core.kernels import FusionOptions, fused_dim
from clipfarm_fusion.core.layout import Layout, part_number
from clipfarm_fusion.errors import SchemaDriftError, StoreError
from clipfarm_fusion.read import tables
from clipfarm_fusion.read.vectors import (
    BrokenPointerError,
    FetchedShard,
    fetch_shard,
    filter_rows,
    latest_per_video,
    load_manifest,
    map_shards,
    on_run_date,
    parse_run_date,
    pointer_problem,
)
from clipfarm_fusion.stores import manifest, s3io, schema_lock, state
from clipfarm_fusion.stores.schema_lock import SchemaLock

log = logging.getLogger(__name__)
MAX_REPORTED = 10
MISSING = "shard missing"


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
    return _published(client, bucket, root, strategy, tables.manifest_table(client, bucket, root, strategy))


def _published(client, bucket: str, root: str, strategy: str, table: pa.Table | None) -> Published:
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


def _lock_findings(published: Published) -> tuple[dict[str, object], list[str]]:
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
    facts, problems = _lock_findings(published)
    if published.lock is not None and _rows(published):
        table = published.manifest
        newest = pc.max(table["fused_key"]).as_py()
        recorded = pc.unique(table.filter(pc.equal(table["fused_key"], newest))["fused_dim"]).to_pylist()
        facts["newest_shard"] = newest
        width, unreadable = _shard_width(fetch_shard(client, published.bucket, newest))
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


def _shard_width(shard: FetchedShard) -> tuple[int | None, str | None]:
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


# --- pointers: one GET per shard, every row of it checked ---------------------------------------------


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
    total = len(_keys(rows))
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


def _listed_and_absent(client, bucket: str, prefix: str, referenced: set[str]) -> tuple[set[str], set[str]]:
    """The shard keys under `prefix` (one LIST request per 1000 keys), and the `referenced` keys under
    `prefix` that are not among them: deleted shards, found without a GET."""
    listed = {key for key in s3io.list_keys(client, bucket, prefix) if part_number(key) is not None}
    return listed, {key for key in referenced if key.startswith(prefix) and key not in listed}


def _keys(table: pa.Table) -> set[str]:
    return set(pc.unique(table["fused_key"]).to_pylist()) if table.num_rows else set()


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
        day_keys, older = _keys(table.filter(in_day)), table.filter(pc.invert(in_day))
        prefix = Layout(published.root).shard_prefix(published.strategy, day)
        listed, absent = _listed_and_absent(client, published.bucket, prefix, day_keys)
        facts.update(partition_shards=len(day_keys), unreferenced_partition_shards=len(listed - day_keys))
    sampled = sample_rows(older, sample_size)
    sampled_keys = _keys(sampled)
    facts.update(sampled_rows=sampled.num_rows, sampled_shards=len(sampled_keys))
    wanted = pa.array(sorted(day_keys | sampled_keys), pa.string())
    rows = table.filter(pc.is_in(table["fused_key"], value_set=wanted))
    tally = PointerTally()
    for check in check_shards(client, published.bucket, rows, threads, absent):
        tally.add(check)
    facts.update(tally.metadata())
    return Verdict(tally.ok, facts)


# --- verify: every check over every shard -------------------------------------------------------------


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
    published = _published(client, bucket, root, strategy, table)
    lock_facts, lock_problems = _lock_findings(published)
    _, unique = manifest_keys_unique(published)
    prefix = layout.shard_prefix(strategy, day) if day else f"{layout.strategy_prefix(strategy)}shards/"
    referenced = _keys(table)
    listed, absent = _listed_and_absent(client, bucket, prefix, referenced)
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
    for check in check_shards(client, bucket, table, threads, absent, progress_every, logger):
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
        disagreements=_disagreeing(client, published, whole, day.isoformat() if day else None)[1],
    )


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
    compared, found = _disagreeing(client, published, published.manifest, partition)
    return Verdict(
        not found, {"videos_compared": compared, "disagreements": len(found), "sample": found[:MAX_REPORTED]}
    )


def _disagreeing(
    client, published: Published, table: pa.Table | None, partition: str | None
) -> tuple[int, list[dict[str, object]]]:
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
