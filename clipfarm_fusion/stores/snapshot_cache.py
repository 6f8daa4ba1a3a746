"""The local copy of an S3 snapshot (the text stage's SQLite file), revalidated once per run.

ONE on-disk copy per uri under `cache_dir` (sidecar JSON: uri, etag, size), checked with one
conditional GET: an unchanged object answers 304 with no body, so a multi-GB file is downloaded only
when its owner has published a new one. A new body is streamed to a temp file (memory stays flat) and
replaces the copy atomically (fsync, os.replace); a lock file serialises runs that share `cache_dir`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import botocore.exceptions

from clipfarm_fusion.stores import s3_faults, s3io, sqlite_bytes

log = logging.getLogger(__name__)
CACHE_SUBDIR = "text_state"
DOWNLOAD_CHUNK = 1 << 20  # bytes per write while streaming a new snapshot to the cache


class Copy(NamedTuple):
    """The current local copy (`path`), or None and why there is none (`warn`: worth a warning)."""

    path: Path | None
    why: str = ""
    warn: bool = False


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
            if s3_faults.is_missing(exc):
                return _MISSING
            if s3_faults.error_code(exc) in {"304", "NotModified"}:
                return _UNCHANGED
            raise
        try:
            size = 0
            with _temp_file(beside) as (temp, handle):
                for chunk in response["Body"].iter_chunks(DOWNLOAD_CHUNK):
                    handle.write(chunk)
                    size += len(chunk)
            return _Download(temp, response.get("ETag"), size)
        except s3_faults.BODY_ERRORS:
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


@contextlib.contextmanager
def current_copy(client, uri: str, cache_dir: Path) -> Iterator[Copy]:
    """The copy of `uri` as of now, downloaded only when it changed; the lock is held while the block
    runs, so what the block opens is the version this revalidation saw."""
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
            yield Copy(None, "not found")
            return
        else:
            with fetched.temp.open("rb") as handle:
                header = handle.read(len(sqlite_bytes.HEADER))
            if header != sqlite_bytes.HEADER:
                fetched.temp.unlink()
                yield Copy(None, f"unavailable: not a SQLite file ({fetched.size} bytes)", warn=True)
                return
            # The database first, then the sidecar: a crash in between leaves an old ETag beside the new
            # copy, which only costs one more download, never a stale read.
            os.replace(fetched.temp, database)
            _fsync_dir(database.parent)
            meta = {"uri": uri, "etag": fetched.etag, "size": fetched.size}
            _write_atomically(sidecar, json.dumps(meta).encode("utf-8"))
            log.info("text state %s downloaded (%d bytes, ETag %s)", uri, fetched.size, fetched.etag)
        yield Copy(database)
