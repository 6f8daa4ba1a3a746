"""The fused manifest: one parquet row per `(video_id, source_hash)`, upserted with pyarrow.

Upsert = old ∪ new, keeping one row per key `(video_id, source_hash)` by the rule of `latest`: the
latest captured_at as a parsed UTC instant (not as text: `...+02:00` and `...Z` compare by the clock;
empty or unparseable is oldest), then the larger fused_key, and on a full tie the existing row. Only
rows whose key the run touched are sorted; the rest of a large manifest passes through untouched. The commit is a conditional PUT on the ETag
that was read, retried on the fresh manifest when another writer got there first.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import latest, s3io
from .errors import ConcurrentWriteError, StoreError

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 8
KEY_COLUMNS = ("video_id", "source_hash")
INSTANT_COLUMN = "captured_at"
TIEBREAK_COLUMNS = ("fused_key",)

SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("captured_at", pa.string()),
        ("source_hash", pa.string()),
        ("fusion_strategy", pa.string()),
        ("fused_dim", pa.int32()),
        ("fused_key", pa.string()),
        ("shard_idx", pa.int32()),
        ("shard_n", pa.int32()),
        ("video_emb_key", pa.string()),
        ("audio_emb_key", pa.string()),
        ("text_emb_key", pa.string()),
        ("text_present", pa.int8()),
        ("text_source", pa.string()),
        ("text_state_status", pa.string()),
        ("text_missing_reason", pa.string()),
        ("fusion_status", pa.string()),
        ("retry_count_at_write", pa.int32()),
    ]
)
# Strategy `projection` adds one column beyond DESIGN §2: the artifact's sha256 on every row.
PROJECTION_SCHEMA = SCHEMA.append(pa.field("projection_id", pa.string()))


def schema_for(strategy: str) -> pa.Schema:
    return PROJECTION_SCHEMA if strategy == "projection" else SCHEMA


def conform(table: pa.Table, schema: pa.Schema = SCHEMA) -> pa.Table:
    """`table` with `schema`'s columns in order; a column it lacks comes back null."""
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def _keys(table: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(table["video_id"], table["source_hash"], "\x1f")


def merge(old: pa.Table | None, new: pa.Table) -> tuple[pa.Table, int, int]:
    """(merged, rows added, rows updated). `new` must have one row per key.

    The latest row per key wins (`latest.latest_index`: captured_at as an instant, then fused_key);
    on a full tie the existing row stays, so merging the same rows again changes nothing and counts
    no update.
    """
    new = conform(new, SCHEMA if "projection_id" not in new.column_names else PROJECTION_SCHEMA)
    if old is None or old.num_rows == 0:
        return new, new.num_rows, 0
    old = conform(old, new.schema)
    # Only rows whose video_id is in `new` can clash: find those cheaply on one column, and build the
    # joined (video_id, source_hash) keys for that small subset, not for the whole manifest.
    candidates = np.flatnonzero(pc.is_in(old["video_id"], value_set=new["video_id"].combine_chunks()))
    subset = old.take(candidates)
    new_keys = _keys(new).combine_chunks() if new.num_rows else pa.array([], pa.string())
    clash_in_subset = pc.is_in(_keys(subset), value_set=new_keys).to_numpy(zero_copy_only=False)
    clashing_rows = candidates[clash_in_subset]
    clashing = int(clashing_rows.size)
    added = new.num_rows - clashing
    if clashing == 0:
        return pa.concat_tables([old, new]), added, 0
    contested = pa.concat_tables(
        [  # the existing rows first: on a full tie the first row wins
            old.take(clashing_rows).append_column("_new", pa.array(np.zeros(clashing, np.int8))),
            new.append_column("_new", pa.array(np.ones(new.num_rows, np.int8))),
        ]
    )
    winners = contested.take(
        latest.latest_index(
            [contested[name] for name in KEY_COLUMNS],
            latest.instants(contested[INSTANT_COLUMN]),
            [contested[name] for name in TIEBREAK_COLUMNS],
        )
    )
    updated = (pc.sum(winners["_new"]).as_py() or 0) - added
    keep = np.ones(old.num_rows, dtype=bool)
    keep[clashing_rows] = False
    merged = pa.concat_tables([old.filter(pa.array(keep)), winners.drop_columns(["_new"])])
    return merged, added, updated


REQUIRED = (
    "video_id",
    "source_hash",
    "captured_at",
    "fused_key",
    "shard_idx",
)  # what a merge and a reader need


def _repair(where: str) -> str:
    return (
        f"{where} is not a readable fused manifest; nothing was written. Restore the previous version "
        "(bucket versioning). Without one, move it and the strategy's state mirror away on purpose: the "
        "next run then fuses every video afresh into a new manifest"
    )


def _opened(body: bytes, where: str) -> pq.ParquetFile:
    """The parquet file with the manifest's columns, from its footer alone; StoreError otherwise."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(body), pre_buffer=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreError(f"{_repair(where)} ({len(body)} bytes: {str(exc)[:200]})") from None
    missing = [name for name in REQUIRED if name not in parquet.schema_arrow.names]
    if missing:
        raise StoreError(f"{_repair(where)} (no column {', '.join(missing)})")
    return parquet


def check(body: bytes, where: str) -> None:
    """StoreError unless `body` looks like a manifest (footer and columns): cheap enough to run before a
    run writes its first shard, without holding the table for the whole run."""
    _opened(body, where)


def parse(body: bytes, where: str) -> pa.Table:
    """Parquet bytes -> the manifest table; StoreError naming the object and the repair otherwise.

    Read without Arrow's thread pool: with it, a short-lived process (the CLI) intermittently aborts
    at exit with "terminate called without an active exception" (apache/arrow#34314).
    """
    parquet = _opened(body, where)
    try:
        return parquet.read(use_threads=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreError(f"{_repair(where)} ({str(exc)[:200]})") from None


def read(client, bucket: str, key: str) -> tuple[pa.Table | None, str | None]:
    """(table, etag) of the current manifest, (None, None) when there is none yet; StoreError when the
    object is there but is not a manifest."""
    return decode(s3io.get_object(client, bucket, key), f"s3://{bucket}/{key}")


def decode(fetched: s3io.Fetched, where: str) -> tuple[pa.Table | None, str | None]:
    return (None, None) if fetched.body is None else (parse(fetched.body, where), fetched.etag)


def encode(table: pa.Table) -> bytes:
    """Parquet bytes; one chunk per column first, since a merge leaves uneven chunks that make the
    write about half again slower."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.combine_chunks(), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def commit(
    client, bucket: str, key: str, new: pa.Table, current: s3io.Fetched | None = None
) -> tuple[int, int]:
    """Upsert `new` into the manifest at `key`; never overwrites rows a concurrent writer added.

    `current` is the manifest object as the run fetched (and checked) it at its start: the first attempt
    merges into it, and the conditional PUT fails if anyone changed it since; later attempts read afresh.
    """
    where = f"s3://{bucket}/{key}"
    for attempt in range(COMMIT_ATTEMPTS):
        fetched = current if attempt == 0 and current is not None else s3io.get_object(client, bucket, key)
        old, etag = decode(fetched, where)
        merged, added, updated = merge(old, new)
        try:
            s3io.put_replacing(client, bucket, key, encode(merged), etag)
            return added, updated
        except ConcurrentWriteError:
            log.warning("manifest %s changed under us (attempt %d); merging again", key, attempt + 1)
    raise ConcurrentWriteError(
        f"s3://{bucket}/{key}: lost the race {COMMIT_ATTEMPTS} times to other writers; rerun later"
    )
