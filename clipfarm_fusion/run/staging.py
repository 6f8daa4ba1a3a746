"""Staged objects: what one stage of a run hands the next through the bucket, under
`<root>/staging/<run_id>/`.

A run is plan -> fuse chunks -> commit, and the stages may run in different processes or on different
machines (Dagster's executors), so what passes between them as step outputs is a small descriptor; the
rows travel as staged objects. Each is ONE object: a parquet file whose rows are named Arrow tables (IPC
bytes) and whose metadata holds a JSON document, so a stage reads or writes its share with one request.

The commit removes the run's staged objects once it has published; a run that never reaches its commit
(killed, or its plan superseded) leaves them behind. A run is live while any of its staged objects is
younger than STALE_AFTER (each chunk stages its output when it is done, so a run longer than a day whose
chunks progress stays live); every plan sweeps the objects of runs that are not, whole runs at a time,
and `gc` keeps every shard written since the oldest live run began (`live_runs`).
"""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import StoreError
from clipfarm_fusion.stores import s3_faults, s3io

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(days=1)
_META = b"clipfarm_staged"
_CONTAINER = pa.schema([("name", pa.string()), ("ipc", pa.large_binary())])


def pack(tables: dict[str, pa.Table], meta: dict) -> bytes:
    """Named tables and a JSON document as one parquet file."""
    blobs = []
    for table in tables.values():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        blobs.append(sink.getvalue().to_pybytes())
    container = pa.table({"name": list(tables), "ipc": blobs}, schema=_CONTAINER)
    container = container.replace_schema_metadata({_META: json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(container, buffer, compression="zstd")
    return buffer.getvalue()


def unpack(body: bytes, where: str) -> tuple[dict[str, pa.Table], dict]:
    try:
        container = pq.read_table(io.BytesIO(body))
        meta = json.loads(container.schema.metadata[_META])
        tables = {
            name: pa.ipc.open_stream(blob).read_all()
            for name, blob in zip(container["name"].to_pylist(), container["ipc"].to_pylist(), strict=True)
        }
    except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"staged object {where} is unreadable ({exc}); rerun the day") from exc
    return tables, meta


def put(client, bucket: str, key: str, tables: dict[str, pa.Table], meta: dict, patience_s: float) -> None:
    body = pack(tables, meta)
    s3_faults.with_patience(
        lambda: client.put_object(Bucket=bucket, Key=key, Body=body),
        f"writing s3://{bucket}/{key}",
        patience_s,
    )


def get(client, bucket: str, key: str, patience_s: float) -> tuple[dict[str, pa.Table], dict]:
    where = f"s3://{bucket}/{key}"
    fetched = s3_faults.with_patience(
        lambda: s3io.get_object(client, bucket, key), f"reading {where}", patience_s
    )
    if fetched.body is None:
        raise StoreError(
            f"staged object {where} is missing: its run was committed or swept by another; rerun the day"
        )
    return unpack(fetched.body, where)


def remove(client, bucket: str, keys: list[str]) -> None:
    """Delete staged objects, a thousand per request."""
    for start in range(0, len(keys), 1000):
        objects = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


def _listed(client, bucket: str, layout: Layout) -> dict[str, list[dict]]:
    """The staged objects, by run_id (one LIST per 1000)."""
    runs: dict[str, list[dict]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=layout.staging_prefix()
    ):
        for entry in page.get("Contents", []):
            run_id = entry["Key"][len(layout.staging_prefix()) :].split("/", 1)[0]
            runs.setdefault(run_id, []).append(entry)
    return runs


def live_runs(client, bucket: str, layout: Layout, now: datetime | None = None) -> dict[str, datetime]:
    """run_id -> when it began (its oldest staged object), for every run still live."""
    cutoff = (now or datetime.now(UTC)) - STALE_AFTER
    return {
        run_id: min(e["LastModified"] for e in entries)
        for run_id, entries in _listed(client, bucket, layout).items()
        if max(e["LastModified"] for e in entries) >= cutoff
    }


def sweep(client, bucket: str, layout: Layout, now: datetime | None = None) -> int:
    """Remove the staged objects of runs that are no longer live (none of their objects is younger than
    STALE_AFTER: killed, or superseded); returns how many. A live run's objects are never touched."""
    cutoff = (now or datetime.now(UTC)) - STALE_AFTER
    stale = [
        entry["Key"]
        for entries in _listed(client, bucket, layout).values()
        if max(e["LastModified"] for e in entries) < cutoff
        for entry in entries
    ]
    if stale:
        remove(client, bucket, stale)
        log.info(
            "swept %d staged objects of runs idle for over %s (never committed)", len(stale), STALE_AFTER
        )
    return len(stale)
