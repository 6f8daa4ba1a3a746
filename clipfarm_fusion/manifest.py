"""The fused manifest: one parquet row per `(video_id, source_hash)`, upserted with pyarrow.

Upsert = old ∪ new, keeping the last row per key ordered by
`(video_id, source_hash, captured_at, fused_key)`. Only rows whose key the run touched are sorted;
the rest of a large manifest passes through untouched. The commit is a conditional PUT on the ETag
that was read, retried on the fresh manifest when another writer got there first.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import s3io
from .errors import ConcurrentWriteError

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 8
SORT_KEYS = ("video_id", "source_hash", "captured_at", "fused_key")

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


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def _keys(table: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(table["video_id"], table["source_hash"], "\x1f")


def merge(old: pa.Table | None, new: pa.Table) -> tuple[pa.Table, int, int]:
    """(merged, rows added, rows updated). `new` must have one row per key.

    The latest row per key by SORT_KEYS wins; on a full tie the existing row stays, so merging the
    same rows again changes nothing and counts no update.
    """
    new = new.cast(SCHEMA)
    if old is None or old.num_rows == 0:
        return new, new.num_rows, 0
    old = old.select(SCHEMA.names).cast(SCHEMA)
    clash = pc.is_in(
        _keys(old),
        value_set=pa.concat_arrays(_keys(new).chunks) if new.num_rows else pa.array([], pa.string()),
    )
    contested = pa.concat_tables(
        [
            old.filter(clash).append_column("_new", pa.array(np.zeros(pc.sum(clash).as_py() or 0, np.int8))),
            new.append_column("_new", pa.array(np.ones(new.num_rows, np.int8))),
        ]
    ).sort_by([*((name, "ascending") for name in SORT_KEYS), ("_new", "descending")])
    keys = _keys(contested).to_numpy(zero_copy_only=False)
    is_last = np.append(keys[1:] != keys[:-1], True)
    winners = contested.filter(pa.array(is_last))
    clashing = pc.sum(clash).as_py() or 0
    added = new.num_rows - clashing
    updated = (pc.sum(winners["_new"]).as_py() or 0) - added
    merged = pa.concat_tables([old.filter(pc.invert(clash)), winners.drop_columns(["_new"])])
    return merged, added, updated


def read(client, bucket: str, key: str) -> tuple[pa.Table | None, str | None]:
    """(table, etag) of the current manifest, (None, None) when there is none yet.

    Read without Arrow's thread pool: with it, a short-lived process (the CLI) intermittently aborts
    at exit with "terminate called without an active exception" (apache/arrow#34314).
    """
    fetched = s3io.get_object(client, bucket, key)
    if fetched.body is None:
        return None, None
    return pq.read_table(pa.BufferReader(fetched.body), use_threads=False), fetched.etag


def encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def commit(client, bucket: str, key: str, new: pa.Table) -> tuple[int, int]:
    """Upsert `new` into the manifest at `key`; never overwrites rows a concurrent writer added."""
    for attempt in range(COMMIT_ATTEMPTS):
        old, etag = read(client, bucket, key)
        merged, added, updated = merge(old, new)
        try:
            s3io.put_replacing(client, bucket, key, encode(merged), etag)
            return added, updated
        except ConcurrentWriteError:
            log.warning("manifest %s changed under us (attempt %d); merging again", key, attempt + 1)
    raise ConcurrentWriteError(
        f"s3://{bucket}/{key}: lost the race {COMMIT_ATTEMPTS} times to other writers; rerun later"
    )
