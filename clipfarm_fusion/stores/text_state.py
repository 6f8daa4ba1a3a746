"""The text stage's snapshot (`processed_items`), opened read-only: what the gating policy needs to know.

The text stage owns this file; we only ever read it. The table is `processed_items(video_id TEXT
PRIMARY KEY, source_hash TEXT, processed_at TEXT, status TEXT, error TEXT)`; older files lack
source_hash, processed_at or error, which simply read as None (or "no signal" for `changed_since`).

Memory follows the ids a caller asks about, never the file: rows are fetched by id in chunks of at most
`ID_CHUNK` bound parameters, so a 10M-row snapshot costs no more than the batch being gated.

An S3 snapshot is read from one local copy that `snapshot_cache` revalidates with a conditional GET
per run. A local path is opened in place with `mode=ro`, never copied. Missing, unreadable, corrupt or locked means "unavailable" (`TextState.problem`), which the
policy turns into `missing_text_state_unavailable` for the items that need it; none of those raise.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from clipfarm_fusion.stores import snapshot_cache

log = logging.getLogger(__name__)
ID_CHUNK = 900  # bound parameters per statement: well under every SQLite build's limit (999 before 3.32)
BUSY_TIMEOUT_S = 2.0  # how long a read waits out the text stage's write lock before "locked"

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


def _open_s3(client, uri: str, cache_dir: Path) -> TextState:
    with snapshot_cache.current_copy(client, uri, cache_dir) as copy:
        if copy.path is None:
            return _unavailable(uri, f"text state {uri} {copy.why}", warn=copy.warn)
        # Opened under the cache's lock: the descriptor keeps this version even if another run replaces
        # the file.
        return TextState(uri, _connect(copy.path, immutable=True))
