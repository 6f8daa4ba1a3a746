"""Reading fused vectors back: manifest rows -> one GET per shard -> `(video_ids, vectors (N, F), rows)`.

The manifest says where each vector lives (`fused_key` row `shard_idx`). Choosing rows (date and
width filters, the latest row per video, request order) is pyarrow over the manifest alone. Reading
groups the chosen rows by shard so each shard is fetched once, decodes it in a worker thread and
copies out only the chosen rows, so memory holds what is returned plus a bounded window of shards in
flight. `read_vectors` and the CLI's `inspect` and `export` all build on `select_rows` + `iter_shards`;
`verify` builds on the same `map_shards`, `fetch_shard` and `pointer_problem`, so readers and checks
judge a shard by one rule.
"""

from __future__ import annotations

import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.config import DEFAULT_ROOT, resolve_bucket
from clipfarm_fusion.core import latest
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import ClipfarmError, ConfigError
from clipfarm_fusion.read import tables
from clipfarm_fusion.stores import s3io, schema_lock, shards
from clipfarm_fusion.stores.schema_lock import SchemaLock

MAX_NAMED = 5
# What numpy raises for bytes that are not a shard: random bytes, a truncated zip, a missing array.
UNDECODABLE = (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile)
T = TypeVar("T")


class MissingVectorsWarning(UserWarning):
    """Requested video_ids without a manifest row (after the run_date / fused_dim filters).

    They are left out of the result; `.missing` lists every one of them, in request order. Turn the
    warning into an error with `warnings.simplefilter("error", MissingVectorsWarning)`: the raised
    warning still carries `.missing`.
    """

    def __init__(self, missing: list[str], scope: str) -> None:
        self.missing = missing
        more = " ..." if len(missing) > MAX_NAMED else ""
        super().__init__(
            f"{len(missing)} requested video_id(s) have no row in {scope} and are left out: "
            f"{missing[:MAX_NAMED]}{more} (this warning's .missing lists them all)"
        )


class OlderLockWarning(UserWarning):
    """Selected videos whose latest row was fused under another schema lock than the one asked for
    (by default the current `schema.json`): left out, so one matrix never mixes two models or two sets
    of options. `.ids` lists them, `.locks` counts them per lock_id."""

    def __init__(self, strategy: str, ids: list[str], locks: dict[str, int], wanted: str) -> None:
        self.ids = ids
        self.locks = locks
        super().__init__(
            f"{len(ids)} {strategy} video(s) were fused under another lock than {wanted} and are left out "
            f"(rows per lock: {locks}; this warning's .ids lists them). Read them with lock='all' or "
            f"lock=<lock_id>, or replace them with `clipfarm-fusion refuse --strategy {strategy} --all`"
        )


ALL_LOCKS = "all"
UNKNOWN_LOCK = "unknown"  # how OlderLockWarning counts rows without a lock_id that predate the lock


def under_lock(rows: pa.Table, lock: SchemaLock | None, wanted: str | None = None) -> pa.Array:
    """Per row, whether it was fused under the lock `wanted` (a lock_id; None: `lock`, the current one;
    `ALL_LOCKS`: every row). A row written before manifests recorded `lock_id` counts as fused under
    the current lock when it has that lock's width and is no older than the lock's last
    `migrate-schema` (the lock's history says when)."""
    if wanted == ALL_LOCKS or (wanted is None and lock is None) or rows.num_rows == 0:
        return pa.array(np.ones(rows.num_rows, dtype=bool))
    lock_ids = rows["lock_id"] if "lock_id" in rows.column_names else pa.nulls(rows.num_rows, pa.string())
    target = wanted or lock.lock_id
    matches = pc.fill_null(pc.equal(lock_ids, target), False)
    if lock is None or target != lock.lock_id:
        return matches
    since = latest.instants(pa.array([lock.history[-1]["replaced_at"]])) if lock.history else None
    untagged = pc.and_(pc.is_null(lock_ids), pc.equal(rows["fused_dim"], lock.fused_dim))
    if since is not None:
        stamps = rows["fused_at"] if "fused_at" in rows.column_names else pa.nulls(rows.num_rows, pa.string())
        untagged = pc.and_(untagged, pa.array(latest.instants(stamps) >= since[0]))
    return pc.or_(matches, untagged)


def _held_back(strategy: str, rows: pa.Table, keep: pa.Array, wanted: str) -> None:
    """Warn about the rows `keep` leaves out, counted per lock."""
    dropped = rows.filter(pc.invert(keep))
    if not dropped.num_rows:
        return
    lock_ids = dropped["lock_id"] if "lock_id" in dropped.column_names else pa.nulls(dropped.num_rows)
    counts = pc.value_counts(pc.fill_null(lock_ids.cast(pa.string()), UNKNOWN_LOCK)).to_pylist()
    locks = {entry["values"]: entry["counts"] for entry in counts}
    warnings.warn(OlderLockWarning(strategy, dropped["video_id"].to_pylist(), locks, wanted), stacklevel=3)


class BrokenPointerError(ClipfarmError):
    """A manifest row does not resolve to its vector: the shard is missing or unreadable, or its row
    holds another video. Published data is inconsistent; run the `manifest_pointers_resolve` check."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Selection:
    """Manifest rows `(N,)` in output order, and the requested ids that had no row."""

    rows: pa.Table
    missing: list[str]


class ShardRead(NamedTuple):
    """The selected rows of one shard: `positions (n,)` into the selection, their manifest rows and
    vectors `(n, F)` float32, copied out of the decoded shard."""

    key: str
    positions: np.ndarray
    rows: pa.Table
    vectors: np.ndarray


class FetchedShard(NamedTuple):
    """One shard after one GET: its decoded arrays (`video_ids (n,)`, `vectors (n, F)`, `captured_at
    (n,)`), or None and why: `missing` (no such object) or `decode_error` (bytes that are not a shard)."""

    arrays: dict[str, np.ndarray] | None
    missing: bool = False
    decode_error: Exception | None = None


def parse_run_date(run_date: date | str | None) -> date | None:
    if run_date is None or isinstance(run_date, date):
        return run_date
    try:
        return date.fromisoformat(run_date)
    except ValueError:
        raise ConfigError(f"run_date {run_date!r} is not a date: use YYYY-MM-DD") from None


def load_manifest(client, bucket: str, root: str, strategy: str) -> pa.Table:
    """The strategy's whole manifest, columns as in `manifest.schema_for(strategy)` (null where an
    older manifest lacks one). ConfigError when nothing has been published yet, so a typo in bucket, root or
    strategy says so instead of returning nothing."""
    table = tables.manifest_table(client, bucket, root, strategy)
    if table is None:
        key = Layout(root.strip("/")).manifest_table_key(strategy)
        raise ConfigError(
            f"s3://{bucket}/{key} does not exist: nothing has been fused for {strategy} under that bucket "
            "and root; run `clipfarm-fusion run` first"
        )
    return table


def on_run_date(table: pa.Table, run_date: date) -> pa.ChunkedArray:
    """`(N,)` bool: which manifest rows point into a shard under `date=<run_date>/`."""
    return pc.match_substring(table["fused_key"], f"/date={run_date.isoformat()}/")


def filter_rows(table: pa.Table, run_date: date | None = None, fused_dim: int | None = None) -> pa.Table:
    """Rows whose shard is under `date=<run_date>/`, and/or whose vectors are `fused_dim` wide."""
    if run_date is not None:
        table = table.filter(on_run_date(table, run_date))
    if fused_dim is not None:
        table = table.filter(pc.equal(table["fused_dim"], fused_dim))
    return table


def latest_per_video(table: pa.Table) -> pa.Table:
    """One row per video_id, sorted by video_id: the latest by `(captured_at, fused_at)`, by the one
    rule of `latest.latest_index`.

    captured_at is compared as a parsed UTC instant, not as text: the manifest keeps the metadata's
    own spelling, and `...Z`, `...+00:00` and `...+02:00` must compare by the clock, not by their
    suffix. A row without one (or an unparseable one) loses to any dated row, as in
    `metadata.dedupe_latest`. At the same capture the later commit wins (`fused_at`, one fixed-width
    UTC spelling, so text order is time order); rows from before `fused_at` existed lose to any that has
    it, and among themselves the larger fused_key wins.
    """
    if table.num_rows == 0:
        return table
    stamps = table["fused_at"] if "fused_at" in table.column_names else pa.nulls(table.num_rows, pa.string())
    winners = latest.latest_index(
        [table["video_id"]], latest.instants(table["captured_at"]), [stamps, table["fused_key"]]
    )
    return table.take(winners)


def select_rows(
    table: pa.Table,
    video_ids: Iterable[str] | None = None,
    run_date: date | None = None,
    fused_dim: int | None = None,
) -> Selection:
    """The rows to read: filters first, then the latest row per video; in the order of `video_ids`
    (an id given twice comes back twice), or sorted by video_id when no ids are given.

    With ids, the manifest is cut to their rows before the latest row is picked: that pick sorts,
    and sorting a million-row manifest for a hundred ids would cost seconds.
    """
    table = filter_rows(table, run_date, fused_dim)
    if video_ids is None:
        return Selection(latest_per_video(table), [])
    if isinstance(video_ids, str):
        raise ConfigError(f"video_ids must be a list of ids, not the string {video_ids[:80]!r}")
    requested = pa.array(list(video_ids), pa.string())
    latest = latest_per_video(table.filter(pc.is_in(table["video_id"], value_set=requested)))
    positions = pc.index_in(requested, value_set=latest["video_id"].combine_chunks())
    found = positions.is_valid()
    missing = requested.filter(pc.invert(found)).to_pylist()
    return Selection(latest.take(positions.filter(found)), list(dict.fromkeys(missing)))


def common_dim(rows: pa.Table, strategy: str) -> int | None:
    """The one fused_dim of `rows` (None when empty). Vectors of different widths cannot be stacked
    into one `(N, F)` matrix: that happens after `migrate-schema`, and the caller must choose."""
    dims = sorted(pc.unique(rows["fused_dim"]).to_pylist())
    if len(dims) > 1:
        raise ConfigError(
            f"the selected {strategy} rows have vectors of different widths {dims} (fused under an earlier "
            "schema lock, see migrate-schema): pass fused_dim= / --fused-dim, or select by run_date or ids"
        )
    return dims[0] if dims else None


def group_by_shard(rows: pa.Table) -> list[tuple[str, np.ndarray]]:
    """`(fused_key, positions (n,))` per shard, keys sorted; positions keep selection order."""
    if rows.num_rows == 0:
        return []
    keys, inverse = np.unique(rows["fused_key"].to_numpy(zero_copy_only=False), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(keys)))[:-1]
    return list(zip(keys.tolist(), np.split(order, bounds), strict=True))


def fetch_shard(client, bucket: str, key: str) -> FetchedShard:
    """GET `key` once and decode it. A missing or undecodable shard is a value, not an exception, so a
    reader can stop at it and a check can report it; a failed GET (botocore) still raises."""
    body = s3io.get_object(client, bucket, key).body
    if body is None:
        return FetchedShard(None, missing=True)
    try:
        return FetchedShard(shards.decode(body))
    except UNDECODABLE as exc:
        return FetchedShard(None, decode_error=exc)


def _read_shard(client, bucket: str, key: str, positions: np.ndarray, rows: pa.Table) -> ShardRead:
    """GET and decode one shard, check every pointer into it, copy the pointed-at rows out.

    Runs in a worker thread; the decoded shard is dropped on return, so only the copies live on.
    """
    shard = fetch_shard(client, bucket, key)
    if shard.missing:
        example = rows["video_id"][0].as_py()
        raise BrokenPointerError(
            key, f"shard missing; {rows.num_rows} manifest row(s) point at it, e.g. {example!r}"
        )
    if shard.decode_error is not None:
        raise BrokenPointerError(key, f"shard does not decode ({shard.decode_error})")
    vectors = shard.arrays["vectors"]
    problem = pointer_problem(shard.arrays["video_ids"], vectors, rows)
    if problem:
        raise BrokenPointerError(key, problem)
    index = rows["shard_idx"].to_numpy()
    return ShardRead(key, positions, rows, vectors[index].astype(np.float32, copy=False))


def pointer_problem(stored_ids: np.ndarray, vectors: np.ndarray, rows: pa.Table) -> str | None:
    """Why `rows` do not resolve in a decoded shard (`stored_ids (n,)`, `vectors (n, F)`), or None."""
    recorded = sorted(set(zip(rows["shard_n"].to_pylist(), rows["fused_dim"].to_pylist(), strict=True)))
    if vectors.ndim != 2 or len(stored_ids) != vectors.shape[0] or recorded != [vectors.shape]:
        return (
            f"shard holds {len(stored_ids)} ids and vectors of shape {vectors.shape}, its manifest rows "
            f"say (shard_n, fused_dim) {recorded}"
        )
    index = rows["shard_idx"].to_numpy()
    if index.min() < 0 or index.max() >= len(stored_ids):
        return f"shard_idx {index.min()}..{index.max()} out of range for a shard of {len(stored_ids)} rows"
    wanted = rows["video_id"].to_numpy(zero_copy_only=False).astype(str)
    wrong = np.flatnonzero(stored_ids[index] != wanted)
    if wrong.size:
        first = int(wrong[0])
        return (
            f"{wrong.size} pointer(s) lead to another video: row {index[first]} holds "
            f"{str(stored_ids[index[first]])!r}, the manifest says {wanted[first]!r}"
        )
    return None


def map_shards(rows: pa.Table, threads: int, read: Callable[[str, np.ndarray, pa.Table], T]) -> Iterator[T]:
    """`read(fused_key, positions (n,), shard_rows)` for each shard the rows point into, in worker
    threads; results in key order.

    At most `threads` shards are being read or waiting to be consumed at any time, so memory is bounded
    by `threads` shards whatever the size of the selection or the speed of the consumer. A consumer
    that stops early (or a `read` that raises) cancels the reads not yet started.
    """
    groups = group_by_shard(rows)
    if not groups:
        return
    pending: deque[Future[T]] = deque()
    pool = ThreadPoolExecutor(max_workers=max(1, min(threads, len(groups))))
    try:
        for key, positions in groups:
            pending.append(pool.submit(read, key, positions, rows.take(positions)))
            if len(pending) >= threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_shards(client, bucket: str, rows: pa.Table, threads: int) -> Iterator[ShardRead]:
    """One `ShardRead` per shard the rows point into, shards in key order, each fetched with ONE GET and
    `threads` at a time; BrokenPointerError at the first shard that does not resolve its rows."""
    return map_shards(rows, threads, partial(_read_shard, client, bucket))


def read_vectors(
    strategy: str,
    video_ids: Iterable[str] | None = None,
    run_date: date | str | None = None,
    bucket: str | None = None,
    root: str = DEFAULT_ROOT,
    client=None,
    threads: int = 16,
    fused_dim: int | None = None,
    lock: str | None = None,
) -> tuple[list[str], np.ndarray, pa.Table]:
    """`(video_ids, vectors (N, F) float32, rows)`: the fused vectors of `strategy` with their manifest rows.

    - `video_ids`: the ids to read, returned in this order (an id given twice comes back twice);
      None reads every video, sorted by video_id.
    - `run_date` (date or 'YYYY-MM-DD'): only rows whose shard is under `date=<run_date>/`.
    - `lock`: only videos whose vector was fused under this schema lock (a `lock_id`, as the manifest
      rows and `inspect` show it); None, the default, means the current `schema.json`, and `'all'`
      every lock. The videos left out are reported with an `OlderLockWarning` (`.ids`, `.locks`): a
      same-dims model or option change never mixes silently into one matrix.
    - `fused_dim`: only rows of this width. Rows fused before a `migrate-schema` keep their old width
      and cannot be stacked with newer ones: a mixed selection raises ConfigError naming the widths.
    - One vector per video: when a video has several rows (several source_hash), the latest by
      `(captured_at, fused_key)` among those the filters kept.
    - Requested ids without a row are left out and reported with a `MissingVectorsWarning`, whose
      `.missing` lists them all.
    - `bucket` defaults to $CLIPFARM_BUCKET. Each shard is fetched with one GET, `threads` at a time.
    - Nothing selected: `([], (0, fused_dim or 0) array, empty rows)`.

    Raises ConfigError (no bucket, no manifest, mixed widths) and BrokenPointerError when a row's
    shard is missing or holds another video there: corrupt data never passes silently.
    """
    bucket = resolve_bucket(bucket)
    client = client or s3io.make_client(threads)
    when = parse_run_date(run_date)
    selection = select_rows(load_manifest(client, bucket, root, strategy), video_ids, when, fused_dim)
    if selection.missing:
        scope = f"the {strategy} manifest" + (f" for date={when}" if when else "")
        warnings.warn(MissingVectorsWarning(selection.missing, scope), stacklevel=2)
    rows = selection.rows
    if lock != ALL_LOCKS:
        current = schema_lock.read(client, bucket, Layout(root.strip("/")).schema_key(strategy))
        keep = under_lock(rows, current, lock)
        _held_back(
            strategy, rows, keep, lock or f"the current lock ({current.lock_id if current else 'none'})"
        )
        rows = rows.filter(keep)
    width = common_dim(rows, strategy) or fused_dim or 0
    vectors = np.empty((rows.num_rows, width), np.float32)
    for shard in iter_shards(client, bucket, rows, threads):
        vectors[shard.positions] = shard.vectors
    return rows["video_id"].to_pylist(), vectors, rows
