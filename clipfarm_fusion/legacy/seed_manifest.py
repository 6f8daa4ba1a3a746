"""The seed-era manifest file (`fused/<s>/fused_manifest.parquet`), read for the one-time import.

Until a strategy's manifest table exists, `read_manifest` reads this file in place; the first run
imports it into the table and never reads it again. (`snapshot-manifest` still writes a file of this
format for readers that have not moved to the table.)
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import StoreError
from clipfarm_fusion.stores import s3io


def read(client, bucket: str, layout: Layout, strategy: str) -> tuple[pa.Table | None, str]:
    """The file's rows as written (None: there is none) and where they were read."""
    key = layout.manifest_key(strategy)
    where = f"s3://{bucket}/{key}"
    fetched = s3io.get_object(client, bucket, key)
    return (None if fetched.body is None else parse(fetched.body, where)), where


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
        "(bucket versioning). Without one, move it and the strategy's seed-era state file away on purpose: "
        "the next run then fuses every video afresh into a new manifest table"
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
