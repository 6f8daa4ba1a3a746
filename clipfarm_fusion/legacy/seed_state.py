"""Seed-era state files: a SQLite DB with one `processed_items` table, read once for the import.

The S3 mirror (`state/fusion_<s>.sqlite`) is the state when it exists; else a working copy under
--state-dir that was never a mirror's cache (the seed-era script's own file). The import gives the
rows the cursor columns a run would have recorded, so the first run after an upgrade hashes only what
is new or changed, like any other.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from clipfarm_fusion.core import latest, metadata
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import StoreError
from clipfarm_fusion.stores import manifest, s3io, sqlite_bytes
from clipfarm_fusion.stores.state_schema import CURSOR_COLUMNS, SCHEMA, STATE_COLUMNS, WRITER_COLUMN

REQUIRED_COLUMNS = ("video_id", "status")  # what even the oldest state files have

seed_metadata = sa.MetaData()
processed_items = sa.Table(
    "processed_items",
    seed_metadata,
    sa.Column("video_id", sa.Text, primary_key=True),
    sa.Column("source_hash", sa.Text),
    sa.Column("processed_at", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("artifact_key", sa.Text),
    sa.Column("vector_id", sa.Text),
    sa.Column("retry_count", sa.Integer),
)


def rows_to_import(
    client, bucket: str, layout: Layout, strategy: str, state_dir: Path
) -> tuple[pa.Table | None, str]:
    """The rows of the strategy's seed-era state file in the state table's schema, with the cursors
    its published manifest rows give, and where they were read (None when there is no such file)."""
    key = layout.state_mirror_key(strategy)
    where = f"s3://{bucket}/{key}"
    body = s3io.get_object(client, bucket, key).body
    if body is None:
        path = Layout.state_path(state_dir, strategy)
        if not path.exists() or _was_mirrored(path):
            return None, where
        body, where = path.read_bytes(), str(path)
    rows = _imported(read_snapshot(body, where))
    return _with_cursors(rows, manifest.read(client, bucket, layout, strategy)), where


def read_mirror(client, bucket: str, layout: Layout, strategy: str) -> pd.DataFrame | None:
    """The rows of the strategy's S3 mirror, read in place (None: there is none)."""
    key = layout.state_mirror_key(strategy)
    body = s3io.get_object(client, bucket, key).body
    return None if body is None else read_snapshot(body, f"s3://{bucket}/{key}")


def _was_mirrored(path: Path) -> bool:
    """A 0.1/0.2 working copy (it has a `.etag` or `.mirror.json` sidecar) was only ever a cache of an S3
    mirror: with the mirror gone (a recreated bucket) it describes shards that no longer exist, so it is
    never imported. The seed-era script's file had no mirror: that one is the state, and is imported."""
    return any(path.with_name(path.name + suffix).exists() for suffix in (".mirror.json", ".etag"))


def _imported(frame: pd.DataFrame) -> pa.Table:
    """Seed-era rows, the cursor columns still null (`_with_cursors` fills them)."""
    for column in CURSOR_COLUMNS:
        frame[column] = pd.array([None] * len(frame), dtype="Int64")
    frame[WRITER_COLUMN] = pd.array([None] * len(frame), dtype="string")
    return pa.Table.from_pandas(frame.reset_index(), schema=SCHEMA, preserve_index=False)


def _with_cursors(rows: pa.Table, published: pa.Table | None) -> pa.Table:
    """Imported rows with the cursor columns a run would have recorded: `hash64` from the row's own
    source_hash, `captured_ns` from the manifest row fused for that (video_id, source_hash). Rows
    without a manifest row (failures, pending items) keep a null instant and are compared in full until
    the next run that processes them."""
    hashes = pa.array(metadata.hash64_of_hex(rows["source_hash"].to_pylist()), pa.int64())
    hashes = pc.if_else(pc.is_null(rows["source_hash"]), pa.scalar(None, pa.int64()), hashes)
    rows = rows.set_column(rows.schema.get_field_index("hash64"), "hash64", hashes)
    if published is None or published.num_rows == 0:
        return rows
    fused = published.select(["video_id", "source_hash", "captured_at"])
    fused = fused.append_column("captured", pa.array(latest.instants(fused["captured_at"]), pa.int64()))
    joined = rows.drop_columns(["captured_ns"]).join(
        fused.drop_columns(["captured_at"]),
        ["video_id", "source_hash"],
        join_type="left outer",
        use_threads=False,
    )
    joined = joined.rename_columns([("captured_ns" if n == "captured" else n) for n in joined.column_names])
    return joined.select(SCHEMA.names).cast(SCHEMA)


def check_snapshot(body: bytes, where: str) -> None:
    """Raise StoreError unless `body` is a readable SQLite file with a `processed_items` table."""
    repair = (
        f"{where} is not a usable fusion state DB; nothing was changed. Restore it from a good copy "
        "(a bucket version, or a working copy from --state-dir) or delete it on purpose to start over"
    )
    if not body.startswith(sqlite_bytes.HEADER):
        raise StoreError(f"{repair} ({len(body)} bytes, no SQLite header)")
    try:
        connection = sqlite_bytes.connect(body)
        try:
            integrity = connection.execute("PRAGMA quick_check").fetchone()[0]
            columns = {row[1] for row in connection.execute("PRAGMA table_info(processed_items)")}
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{repair} ({exc})") from None
    if integrity != "ok":
        raise StoreError(f"{repair} (integrity check failed)")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise StoreError(f"{repair} (no processed_items table with {', '.join(missing)})")


def read_snapshot(body: bytes, where: str) -> pd.DataFrame:
    """The rows of a seed-era state DB (its bytes), checked first, indexed by video_id; columns the
    oldest files lack come back empty (retry_count 0)."""
    check_snapshot(body, where)
    engine = sqlite_bytes.engine(body)
    try:
        with engine.connect() as connection:
            present = {row[1] for row in connection.exec_driver_sql("PRAGMA table_info(processed_items)")}
            columns = [processed_items.c[c] for c in STATE_COLUMNS if c in present]
            frame = pd.read_sql_query(sa.select(*columns), connection)
    finally:
        engine.dispose()
    for column in STATE_COLUMNS:
        if column not in frame.columns:
            frame[column] = 0 if column == "retry_count" else None
    frame = frame[list(STATE_COLUMNS)].astype({"video_id": str})
    frame["retry_count"] = frame["retry_count"].fillna(0).astype("int64")
    return frame.set_index("video_id")
