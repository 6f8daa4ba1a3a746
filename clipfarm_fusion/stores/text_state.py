"""The text stage's snapshot (`processed_items`), opened read-only: what the gating policy needs to know.

The text stage owns this file; we only ever read it. The table is `processed_items(video_id TEXT
PRIMARY KEY, source_hash TEXT, processed_at TEXT, status TEXT, error TEXT)`; older files lack
source_hash, processed_at or error, which simply read as None (or "no signal" for `changed_since`).

Memory follows the ids a caller asks about, never the file: rows are fetched by id in chunks of at most
`ID_CHUNK` bound parameters, so a 10M-row snapshot costs no more than the batch being gated.

An S3 snapshot is kept as ONE on-disk copy under `cache_dir` (sidecar JSON: uri, etag, size) and
revalidated with one conditional GET per run: an unchanged object answers 304 with no body, so a
multi-GB file is downloaded only when the text stage has published a new one. A new body replaces the
cache atomically (temp file, fsync, os.replace). A local path is opened in place with `mode=ro`, never
copied. Missing, unreadable, corrupt or locked means "unavailable" (`TextState.problem`), which the
policy turns into `missing_text_state_unavailable` for the items that need it; none of those raise.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import botocore.exceptions
import numpy as np

from clipfarm_fusion.stores import s3io, sqlite_bytes

log = logging.getLogger(__name__)
ID_CHUNK = 900  # bound parameters per statement: well under every SQLite build's limit (999 before 3.32)
BUSY_TIMEOUT_S = 2.0  # how long a read waits out the text stage's write lock before "locked"
CACHE_SUBDIR = "text_state"
DOWNLOAD_CHUNK = 1 << 20  # bytes per write while streaming a new snapshot to the cache

# The instant of processed_at, NULL unless it starts like an ISO-8601 date: julianday() alone also
# accepts 'now' and bare numbers (read as Julian day numbers), which would make garbage look like a time.
_INSTANT = (
    "(CASE WHEN processed_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' "
    "THEN julianday(processed_at) END)"
)
_CURSOR_INSTANT = (
    "SELECT CASE WHEN ?1 GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' THEN julianday(?1) END"
)


class TextState:
    """A read-only view of one text-state snapshot; `problem` is None when it is readable.

    When unavailable, `lookup` answers None for every id, `changed_since` and `cursor` are None. A
    query that fails later (e.g. the text stage holds a write lock past `BUSY_TIMEOUT_S`) makes the
    state unavailable from then on: read `problem` after each call, not only after opening.
    """

    def __init__(self, location: str, connection: sqlite3.Connection | None, problem: str | None = None):
        self.location = location
        self.problem = problem
        self._connection = connection
        self._lock = threading.Lock()
        self._columns: set[str] = set()
        self._indexed = True
        self._cursor: str | None = None
        self._cursor_read = False
        if connection is not None and problem is None:
            self._guard(self._inspect)

    def __enter__(self) -> TextState:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _inspect(self, connection: sqlite3.Connection) -> None:
        """Check the table and its columns once, so an unusable file is reported when opened."""
        self._columns = {row[1] for row in connection.execute("PRAGMA table_info(processed_items)")}
        if not self._columns:
            raise _Unusable("no processed_items table")
        for required in ("video_id", "status"):
            if required not in self._columns:
                raise _Unusable(f"processed_items has no {required} column")
        # An old file without an index on video_id would turn every id chunk into a full table scan.
        plan = connection.execute(
            "EXPLAIN QUERY PLAN SELECT status FROM processed_items WHERE video_id IN (?)", ("",)
        ).fetchall()
        self._indexed = any(str(row[-1]).startswith("SEARCH") for row in plan)
        if not self._indexed:
            log.warning("text state %s has no index on video_id: each lookup scans the table", self.location)

    def _guard(self, query):
        """Run `query(connection)` under the lock; an SQLite failure makes the state unavailable (logged once)."""
        with self._lock:
            if self.problem is not None:
                return None
            if self._connection is None:
                raise RuntimeError(f"text state {self.location} was closed")
            try:
                return query(self._connection)
            except (sqlite3.Error, _Unusable) as exc:
                self.problem = f"text state {self.location} unavailable: {str(exc).splitlines()[0]}"
                log.warning(self.problem)
                self._connection.close()
                self._connection = None
                return None

    def lookup(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(status, source_hash) object arrays aligned with `ids`; None where there is no row, the
        column is absent (old files have no source_hash) or the state is unavailable."""
        status = np.full(len(ids), None, dtype=object)
        source_hash = np.full(len(ids), None, dtype=object)
        hash_column = "source_hash" if "source_hash" in self._columns else "NULL"

        def fill(rows: Iterable[tuple], positions: dict[str, list[int]]) -> None:
            statuses: dict[str, str] = {}  # a handful of distinct values: one string object each
            for video_id, row_status, row_hash in rows:
                for position in positions.get(video_id, ()):
                    if row_status is not None:
                        text = str(row_status)
                        status[position] = statuses.setdefault(text, text)
                    source_hash[position] = None if row_hash is None else str(row_hash)

        def by_chunk(connection: sqlite3.Connection) -> None:
            for start, chunk in _chunks(ids, ID_CHUNK):
                positions: dict[str, list[int]] = {}
                for offset, video_id in enumerate(chunk):
                    positions.setdefault(video_id, []).append(start + offset)
                marks = ", ".join("?" * len(positions))
                fill(
                    connection.execute(
                        f"SELECT video_id, status, {hash_column} FROM processed_items "
                        f"WHERE video_id IN ({marks})",
                        list(positions),
                    ),
                    positions,
                )

        def by_scan(connection: sqlite3.Connection) -> None:
            positions: dict[str, list[int]] = {}
            for start, chunk in _chunks(ids, ID_CHUNK):
                for offset, video_id in enumerate(chunk):
                    positions.setdefault(video_id, []).append(start + offset)
            rows = connection.execute(f"SELECT video_id, status, {hash_column} FROM processed_items")
            fill(((str(row[0]), row[1], row[2]) for row in rows if str(row[0]) in positions), positions)

        if len(ids):
            self._guard(by_chunk if self._indexed else by_scan)
            if self.problem is not None:  # failed part-way: no half-filled answer
                status[:] = None
                source_hash[:] = None
        return status, source_hash

    @property
    def cursor(self) -> str | None:
        """The latest processed_at in the file, as written (None when there is none or no such column).

        Read once, and before any `changed_since` query, so a row the text stage adds meanwhile is
        never behind a cursor stored from this run.
        """
        if not self._cursor_read and "processed_at" in self._columns:

            def latest(connection: sqlite3.Connection) -> str | None:
                row = connection.execute(
                    f"SELECT processed_at FROM processed_items WHERE {_INSTANT} IS NOT NULL "
                    f"ORDER BY {_INSTANT} DESC LIMIT 1"
                ).fetchone()
                return None if row is None else str(row[0])

            self._cursor = self._guard(latest)
            self._cursor_read = self.problem is None
        return self._cursor if self.problem is None else None

    def changed_since(self, cursor: str | None) -> list[str] | None:
        """video_ids whose processed_at instant is later than `cursor`'s (every id with a parseable
        processed_at when `cursor` is None); None when the file has no processed_at column or the state
        is unavailable, meaning "no signal", not "nothing changed".

        Instants are compared by julianday(), so '+02:00' and 'Z' compare by the clock; rows whose
        processed_at is NULL or not a date never count. A `cursor` that is not a date is treated like
        None (everything counts) with a warning: reporting too much is safe, too little is not.
        """
        if self.problem is not None or "processed_at" not in self._columns:
            return None
        _ = self.cursor  # pin the cursor first (see `cursor`)

        def changed(connection: sqlite3.Connection) -> list[str]:
            after = None if cursor is None else connection.execute(_CURSOR_INSTANT, (cursor,)).fetchone()[0]
            if cursor is not None and after is None:
                log.warning("text state cursor %r is not a date: treating every row as changed", cursor)
            if after is None:
                rows = connection.execute(
                    f"SELECT video_id FROM processed_items WHERE {_INSTANT} IS NOT NULL"
                )
            else:
                rows = connection.execute(
                    f"SELECT video_id FROM processed_items WHERE {_INSTANT} > ?", (after,)
                )
            return [str(row[0]) for row in rows]

        return self._guard(changed)


class _Unusable(Exception):
    """The file opened but is not a usable text state (no table, a required column missing)."""


def _chunks(ids: Sequence[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """(start position, ids as str) chunks without copying `ids` (a list, array or Index) as a whole."""
    iterator = iter(ids)
    start = 0
    while chunk := [str(video_id) for video_id in itertools.islice(iterator, size)]:
        yield start, chunk
        start += len(chunk)


def _connect(path: Path, *, immutable: bool) -> sqlite3.Connection:
    """A read-only connection. `immutable` (our own cache, only ever replaced whole) skips locking and
    never creates -wal/-shm files; the text stage's own file may be written meanwhile, so not there."""
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    return sqlite3.connect(
        f"{path.absolute().as_uri()}?{flags}", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False
    )


def _unavailable(location: str, why: str, *, warn: bool = True) -> TextState:
    if warn:
        log.warning(why)
    else:
        log.info(why)
    return TextState(location, None, why)


def open_text_state(client, location: str, cache_dir: Path) -> TextState:
    """Open the snapshot at `location` (s3://bucket/key or a local path) read-only.

    Never raises for a missing, non-SQLite, corrupt, locked or table-less file: `problem` says why.
    An S3 fault or an answer such as AccessDenied does raise, as reading any other input would.
    """
    try:
        if location.startswith("s3://"):
            return _open_s3(client, location, Path(cache_dir))
        return TextState(location, _connect(Path(location), immutable=False))
    except (sqlite3.Error, OSError) as exc:
        return _unavailable(location, f"text state {location} unavailable: {str(exc).splitlines()[0]}")


def _cache_paths(cache_dir: Path, uri: str) -> tuple[Path, Path, Path]:
    """(database, sidecar, lock file) for `uri`: one copy per uri, named by a hash of it."""
    name = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    folder = cache_dir / CACHE_SUBDIR
    return folder / f"{name}.sqlite", folder / f"{name}.json", folder / f"{name}.lock"


def _cached_etag(database: Path, sidecar: Path, uri: str) -> str | None:
    """The ETag the cached copy was downloaded at, or None when there is no trustworthy copy (no
    sidecar, another uri, a size that does not match, or no SQLite header): then the GET is unconditional."""
    try:
        meta = json.loads(sidecar.read_text())
        with database.open("rb") as handle:
            header = handle.read(len(sqlite_bytes.HEADER))
        size = database.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("uri") != uri or meta.get("size") != size:
        return None
    if header != sqlite_bytes.HEADER:
        return None
    etag = meta.get("etag")
    return etag if isinstance(etag, str) and etag else None


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _temp_file(beside: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A new file in `beside`'s folder, named `.<beside's stem>.*` (so a crash's leftovers are found
    again), fsynced when the block ends and removed when it fails."""
    descriptor, name = tempfile.mkstemp(dir=beside.parent, prefix=f".{beside.stem}.")
    path = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield path, handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_atomically(path: Path, body: bytes) -> None:
    """Replace `path` with `body` so a reader (or a crash) sees the old file or the new one, never half."""
    with _temp_file(path) as (temp, handle):
        handle.write(body)
    os.replace(temp, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class _Download:
    """A new body streamed to `temp` (not yet in place), with its ETag and size."""

    temp: Path
    etag: str | None
    size: int


_UNCHANGED = "unchanged"  # 304: the cached copy is current
_MISSING = "missing"  # 404: the object is gone


def _download(client, bucket: str, key: str, if_none_match: str | None, beside: Path) -> _Download | str:
    """One conditional GET, the body streamed to a temp file beside `beside` (fsynced): _UNCHANGED,
    _MISSING or a _Download. Streaming keeps memory flat however large the snapshot is; a body that
    breaks off mid-stream is retried here, as `s3io.get_object` does for in-memory reads."""
    extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
    for attempt in range(s3io.BODY_READ_ATTEMPTS):
        try:
            response = client.get_object(Bucket=bucket, Key=key, **extra)
        except botocore.exceptions.ClientError as exc:
            if s3io.is_missing(exc):
                return _MISSING
            if s3io.error_code(exc) in {"304", "NotModified"}:
                return _UNCHANGED
            raise
        try:
            size = 0
            with _temp_file(beside) as (temp, handle):
                for chunk in response["Body"].iter_chunks(DOWNLOAD_CHUNK):
                    handle.write(chunk)
                    size += len(chunk)
            return _Download(temp, response.get("ETag"), size)
        except s3io._BODY_ERRORS:
            if attempt == s3io.BODY_READ_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise revalidation between runs sharing `cache_dir`, so the sidecar's ETag always
    describes the copy beside it (two interleaved replacements could otherwise pair them wrongly)."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_s3(client, uri: str, cache_dir: Path) -> TextState:
    bucket, key = s3io.parse_s3_uri(uri)
    database, sidecar, lock_path = _cache_paths(cache_dir, uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(lock_path):
        for leftover in database.parent.glob(f".{database.stem}.*"):  # a crashed run's temp files
            leftover.unlink(missing_ok=True)
        etag = _cached_etag(database, sidecar, uri)
        fetched = _download(client, bucket, key, etag, database)
        if fetched is _UNCHANGED:
            log.info("text state %s unchanged (ETag %s): reading the cached copy", uri, etag)
        elif fetched is _MISSING:
            # Gone upstream: a stale copy must not stand in for it, now or in a later run.
            sidecar.unlink(missing_ok=True)
            database.unlink(missing_ok=True)
            return _unavailable(uri, f"text state {uri} not found", warn=False)
        else:
            with fetched.temp.open("rb") as handle:
                header = handle.read(len(sqlite_bytes.HEADER))
            if header != sqlite_bytes.HEADER:
                fetched.temp.unlink()
                why = f"text state {uri} unavailable: not a SQLite file ({fetched.size} bytes)"
                return _unavailable(uri, why)
            # The database first, then the sidecar: a crash in between leaves an old ETag beside the new
            # copy, which only costs one more download, never a stale read.
            os.replace(fetched.temp, database)
            _fsync_dir(database.parent)
            meta = {"uri": uri, "etag": fetched.etag, "size": fetched.size}
            _write_atomically(sidecar, json.dumps(meta).encode("utf-8"))
            log.info("text state %s downloaded (%d bytes, ETag %s)", uri, fetched.size, fetched.etag)
        # Opened under the lock: the descriptor keeps this version even if another run replaces the file.
        return TextState(uri, _connect(database, immutable=True))
