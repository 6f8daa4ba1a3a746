"""The fusion state DB: one SQLite file per strategy, written through SQLAlchemy, mirrored to S3.

The S3 mirror is the source of truth and the local file a working copy. A run restores the mirror
when the local copy is missing or the mirror's ETag differs from the one recorded at our last
sync (a conditional GET, so an unchanged mirror costs one 304 and no body). The upload is
conditional on that ETag, so two machines never silently overwrite each other's state.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import s3io

DDL_PATH = Path(__file__).resolve().parent.parent / "sql" / "state.sql"
WRITE_BATCH = 5000
STATE_COLUMNS = (
    "video_id",
    "source_hash",
    "processed_at",
    "status",
    "error",
    "artifact_key",
    "vector_id",
    "retry_count",
)

metadata = sa.MetaData()
processed_items = sa.Table(
    "processed_items",
    metadata,
    sa.Column("video_id", sa.Text, primary_key=True),
    sa.Column("source_hash", sa.Text),
    sa.Column("processed_at", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("artifact_key", sa.Text),
    sa.Column("vector_id", sa.Text),
    sa.Column("retry_count", sa.Integer),
)


class StateDB:
    """A working copy of `fusion_<strategy>.sqlite`: read once at the start, written in batches at the end."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(f"sqlite:///{self.path}")
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        """Apply the DDL; files from the seed-era script already match it and are left as they are."""
        with self.engine.begin() as connection:
            raw = connection.connection.driver_connection
            raw.executescript(DDL_PATH.read_text())
            present = {row[1] for row in connection.exec_driver_sql("PRAGMA table_info(processed_items)")}
            for column in STATE_COLUMNS:
                if column not in present:
                    kind = "INTEGER DEFAULT 0" if column == "retry_count" else "TEXT"
                    connection.exec_driver_sql(f"ALTER TABLE processed_items ADD COLUMN {column} {kind}")

    def read_all(self) -> pd.DataFrame:
        """Every row, indexed by video_id, for the delta computation."""
        with self.engine.connect() as connection:
            frame = pd.read_sql_query(sa.select(processed_items), connection)
        frame["retry_count"] = frame["retry_count"].fillna(0).astype("int64")
        return frame.set_index("video_id")

    def upsert(self, rows: Iterable[Mapping[str, object]]) -> int:
        """Insert-or-replace rows, one transaction per WRITE_BATCH rows (never one commit per row)."""
        rows = list(rows)
        statement = sqlite_insert(processed_items)
        statement = statement.on_conflict_do_update(
            index_elements=["video_id"],
            set_={c: statement.excluded[c] for c in STATE_COLUMNS if c != "video_id"},
        )
        for start in range(0, len(rows), WRITE_BATCH):
            with self.engine.begin() as connection:
                connection.execute(statement, rows[start : start + WRITE_BATCH])
        return len(rows)

    def close(self) -> None:
        self.engine.dispose()


def _etag_path(path: Path) -> Path:
    return path.with_name(path.name + ".etag")


def recorded_etag(path: Path) -> str | None:
    etag_file = _etag_path(path)
    return etag_file.read_text().strip() or None if etag_file.exists() and path.exists() else None


def _write_atomically(path: Path, body: bytes) -> None:
    scratch = path.with_name(path.name + ".partial")
    with open(scratch, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)


def restore(client, bucket: str, key: str, path: Path) -> str:
    """Bring the local copy up to the mirror; say which copy the run starts from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    etag = recorded_etag(path)
    fetched = s3io.get_object(client, bucket, key, if_none_match=etag)
    if fetched is None:
        return "local copy (mirror unchanged)"
    if fetched.body is None:
        return "local copy (no mirror yet)" if path.exists() else "new state DB"
    _write_atomically(path, fetched.body)
    _etag_path(path).write_text(fetched.etag or "")
    return "restored from mirror"


def upload(client, bucket: str, key: str, path: Path) -> str:
    """Conditional PUT of the local copy over the version we last saw; records the new ETag."""
    etag = s3io.put_replacing(client, bucket, key, path.read_bytes(), recorded_etag(path))
    _etag_path(path).write_text(etag)
    return etag
