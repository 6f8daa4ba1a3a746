"""The fusion state DB: one SQLite file per strategy, written through SQLAlchemy, mirrored to S3.

The S3 mirror is the source of truth; the local file is only a cache of one mirror. A sidecar
(`fusion_<s>.sqlite.mirror.json`) records which mirror (`s3://bucket/key`) the cache belongs to and
the ETag it had at our last download or upload, so:

- a cache of another bucket, root or strategy is never used (it is set aside);
- a cache whose mirror has since disappeared (deleted, or the bucket recreated) is set aside and the
  run starts from empty state, never continuing state that describes objects which no longer exist;
- an unchanged mirror costs one conditional GET (304) and no body;
- a mirror that cannot be a state DB (empty, random bytes, another table) stops the run before it
  replaces anything.

Commits change the cache only together with the mirror: rows go into a scratch copy, the scratch copy
is uploaded with `If-Match`, and only then does it replace the cache. A failed upload leaves the cache
exactly as the run found it. "Set aside" is a rename, never a delete, and the log says where.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import package_data, s3io, sqlite_bytes
from .errors import StoreError

log = logging.getLogger(__name__)
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
REQUIRED_COLUMNS = ("video_id", "status")  # what even the oldest state files have

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
    """A SQLite file with the `processed_items` table: read once at the start, written in batches at the end."""

    def __init__(self, path: Path | None = None, *, engine: sa.Engine | None = None) -> None:
        """A file at `path`, or an `engine` over a database that is not a file (a published snapshot)."""
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = engine or sa.create_engine(f"sqlite:///{self.path}")
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        """Apply the DDL; files from the seed-era script already match it and are left as they are."""
        with self.engine.begin() as connection:
            raw = connection.connection.driver_connection
            raw.executescript(package_data.state_ddl())
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


def read_rows(path: Path) -> pd.DataFrame:
    """The rows of a state file, indexed by video_id (empty when the file does not exist)."""
    if not Path(path).exists():
        return pd.DataFrame(columns=list(STATE_COLUMNS)).set_index("video_id")
    db = StateDB(path)
    try:
        return db.read_all()
    finally:
        db.close()


@dataclass(frozen=True)
class MirrorRecord:
    """Which mirror a working copy belongs to and the ETag it had when the two last agreed."""

    uri: str
    etag: str


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".mirror.json")


def _legacy_etag_path(path: Path) -> Path:
    return path.with_name(path.name + ".etag")  # written by 0.1: an ETag, no identity


def read_record(path: Path, uri: str) -> MirrorRecord | None:
    """The working copy's record; a 0.1 `.etag` sidecar is taken to belong to `uri`."""
    record_file, legacy = _record_path(path), _legacy_etag_path(path)
    if record_file.exists():
        try:
            return MirrorRecord(**json.loads(record_file.read_text()))
        except (ValueError, TypeError):
            return None
    if legacy.exists() and legacy.read_text().strip():
        return MirrorRecord(uri=uri, etag=legacy.read_text().strip())
    return None


def _write_record(path: Path, record: MirrorRecord) -> None:
    _write_atomically(_record_path(path), json.dumps(asdict(record)).encode())
    _legacy_etag_path(path).unlink(missing_ok=True)


def _write_atomically(path: Path, body: bytes) -> None:
    scratch = path.with_name(path.name + ".partial")
    with open(scratch, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)


def set_aside(path: Path, why: str) -> Path:
    """Rename the working copy (and its record) out of the way; never delete it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.set-aside-{stamp}")
    os.replace(path, target)
    for sidecar in (_record_path(path), _legacy_etag_path(path)):
        if sidecar.exists():
            os.replace(sidecar, target.with_name(target.name + sidecar.name[len(path.name) :]))
    log.warning("state working copy %s set aside as %s: %s", path, target, why)
    return target


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
    """The rows of a published state DB (bytes of the mirror), checked first, read in memory with the
    same code as a working copy: indexed by video_id."""
    check_snapshot(body, where)
    db = StateDB(engine=sqlite_bytes.engine(body))
    try:
        return db.read_all()
    finally:
        db.close()


def restore(client, bucket: str, key: str, path: Path) -> str:
    """Make the working copy at `path` a faithful copy of the mirror `s3://bucket/key`; say what it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    uri = f"s3://{bucket}/{key}"
    record = read_record(path, uri) if path.exists() else None
    set_aside_note = ""
    if record is not None and record.uri != uri:
        target = set_aside(path, f"it is a copy of {record.uri}, not of {uri}")
        record, set_aside_note = None, f"; a copy of another mirror was set aside as {target.name}"
    fetched = s3io.get_object(client, bucket, key, if_none_match=record.etag if record else None)
    if fetched is None:
        return "local copy (mirror unchanged)"
    if fetched.body is None:
        if record is not None:
            target = set_aside(
                path,
                f"its mirror {uri} is gone (deleted, or the bucket was recreated); starting from empty state",
            )
            return f"new state DB (mirror gone; the old working copy was set aside as {target.name})"
        if path.exists():
            return "local copy (no mirror yet)"
        return "new state DB" + set_aside_note
    check_snapshot(fetched.body, uri)
    _write_atomically(path, fetched.body)
    _write_record(path, MirrorRecord(uri, fetched.etag or ""))
    return "restored from mirror" + set_aside_note


def commit(client, bucket: str, key: str, path: Path, rows: list[dict]) -> str:
    """Upsert `rows` and publish: the mirror first (conditional on the ETag we last saw), the working
    copy only once the mirror has it, so a refused or failed upload leaves both as they were."""
    uri = f"s3://{bucket}/{key}"
    scratch = path.with_name(path.name + ".commit")
    if path.exists():
        shutil.copyfile(path, scratch)
    else:
        scratch.unlink(missing_ok=True)
    db = StateDB(scratch)
    try:
        db.upsert(rows)
    finally:
        db.close()
    record = read_record(path, uri) if path.exists() else None
    try:
        etag = s3io.put_replacing(client, bucket, key, scratch.read_bytes(), record.etag if record else None)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    os.replace(scratch, path)
    _write_record(path, MirrorRecord(uri, etag))
    return etag
