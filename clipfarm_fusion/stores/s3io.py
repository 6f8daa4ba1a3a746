"""S3 access: one client factory from the standard AWS configuration, concurrent get-or-missing,
and conditional puts. Endpoint and credentials come only from boto3's own configuration chain
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, `AWS_DEFAULT_REGION`), so the same code runs
against real S3, MinIO and a moto server.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config

from clipfarm_fusion.errors import ConcurrentWriteError, ConfigError, S3UnavailableError
from clipfarm_fusion.stores.s3_faults import (
    BODY_ERRORS,
    error_code,
    is_missing,
    is_precondition_failed,
    with_patience,
)

T = TypeVar("T")

log = logging.getLogger(__name__)
BODY_READ_ATTEMPTS = 4
DOWNLOAD_CHUNK = 1 << 20  # bytes per write when an object is streamed to a file
DEFAULT_PATIENCE_S = 60.0  # how long an outage is ridden out before the run stops (exit 6)


def make_client(
    max_pool_connections: int = 32,
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    profile_name: str | None = None,
):
    """The S3 client every module uses: standard retry mode and a pool as wide as our thread pool.

    Endpoint, region and profile default to boto3's own chain (`AWS_ENDPOINT_URL`, `AWS_PROFILE`,
    `AWS_DEFAULT_REGION`); `AWS_REGION`, which the seed script and many tools set, is honoured too.
    An unknown profile is a ConfigError, not a botocore traceback.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=max(10, max_pool_connections),
        connect_timeout=10,
        read_timeout=60,
    )
    try:
        session = boto3.session.Session(profile_name=profile_name or None)
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(f"{exc}; set AWS_PROFILE to a profile in ~/.aws/config, or unset it") from None
    region = region_name or session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    client = session.client("s3", config=config, region_name=region, endpoint_url=endpoint_url or None)
    if profile_name:
        _PROFILES[client] = profile_name
    return client


_PROFILES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client -> the profile it was made with


def profile_of(client) -> str | None:
    """The AWS profile a client was made with (`make_client(profile_name=...)`), else AWS_PROFILE."""
    return _PROFILES.get(client) or os.environ.get("AWS_PROFILE")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ConfigError(f"bad S3 URI {uri!r}: expected s3://BUCKET/KEY")
    return bucket, key


@dataclass(frozen=True)
class Fetched:
    """One object read into memory: `body` None means the key does not exist. `etag` and `version_id`
    (set when the bucket is versioned) say which version of the object the body is: the lineage a
    manifest row records, at no extra request."""

    body: bytes | None
    etag: str | None = None
    version_id: str | None = None


def get_object(client, bucket: str, key: str, if_none_match: str | None = None) -> Fetched | None:
    """GET into memory; 404 -> Fetched(None); 304 (unchanged since `if_none_match`) -> None.

    botocore retries the request itself; a body that breaks off mid-stream is retried here,
    because botocore's retry loop has already returned by the time the body is read.
    """
    extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
    for attempt in range(BODY_READ_ATTEMPTS):
        try:
            response = client.get_object(Bucket=bucket, Key=key, **extra)
            return Fetched(response["Body"].read(), response.get("ETag"), response.get("VersionId"))
        except botocore.exceptions.ClientError as exc:
            if is_missing(exc):
                return Fetched(None)
            if error_code(exc) in {"304", "NotModified"}:
                return None
            raise
        except BODY_ERRORS:
            if attempt == BODY_READ_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def get_many(
    client,
    bucket: str,
    keys: Iterable[str],
    threads: int,
    on_done: Callable[[], None] | None = None,
    patience_s: float = DEFAULT_PATIENCE_S,
) -> dict[str, Fetched | Exception]:
    """GET every key concurrently: what was read (`body` None when missing), or the exception that item
    hit.

    An answer about one object (e.g. AccessDenied) is returned, not raised, so it fails one item and not
    the run. An infrastructure fault is ridden out for `patience_s`, then raises S3UnavailableError for
    the whole call: an outage is never one item's failure.
    """
    gave_up = threading.Event()

    def fetch(key: str) -> tuple[str, Fetched | Exception]:
        try:
            fetched = with_patience(
                lambda: get_object(client, bucket, key),
                f"reading s3://{bucket}/{key}",
                patience_s,
                gave_up,
            )
            return key, fetched
        except S3UnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - an answer about this object is the item's failure
            return key, exc
        finally:
            if on_done:
                on_done()

    unique = list(dict.fromkeys(keys))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(threads, len(unique))) as pool:
        return dict(pool.map(fetch, unique))


def _our_earlier_attempt(client, bucket: str, key: str, body: bytes) -> str | None:
    """The ETag of `key` when it holds exactly `body`, else None.

    A conditional PUT whose response was lost is retried by botocore; the retry then fails its own
    precondition because the first attempt landed. An object whose ETag is the MD5 of our body is
    that first attempt, so the write succeeded (single-part PUTs: the ETag is the body's MD5).
    """
    fetched = get_object(client, bucket, key)
    ours = f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'
    return fetched.etag if fetched.body is not None and fetched.etag == ours else None


def _absent(client, bucket: str, key: str) -> bool:
    """Whether `key` is gone: a 412 on `If-Match` does not say (SeaweedFS answers it for a missing key)."""
    return get_object(client, bucket, key).body is None


def put_if_absent(client, bucket: str, key: str, body: bytes) -> str | None:
    """PUT with `If-None-Match: *`; the new ETag, or None when the key already exists."""
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
    except botocore.exceptions.ClientError as exc:
        if is_precondition_failed(exc):
            return _our_earlier_attempt(client, bucket, key, body)
        raise


def put_replacing(client, bucket: str, key: str, body: bytes, expected_etag: str | None) -> str:
    """Replace `key` only if it is still the version we read (`expected_etag`, None = absent).

    Raises ConcurrentWriteError when someone else wrote it in between, so nobody's write is lost.
    """
    condition = {"IfMatch": expected_etag} if expected_etag else {"IfNoneMatch": "*"}
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
    except botocore.exceptions.ClientError as exc:
        refused = is_precondition_failed(exc)
        if refused and (etag := _our_earlier_attempt(client, bucket, key, body)):
            return etag
        # If-Match on a key that is gone: AWS (and moto) answer 404, SeaweedFS 412.
        if expected_etag and (is_missing(exc) or (refused and _absent(client, bucket, key))):
            # Deleted since we read it: nobody else's version is there to lose, so this is no
            # concurrent write (exit 4 is for those); create it afresh, still never over another's.
            log.warning("s3://%s/%s was deleted while this run worked; writing it afresh", bucket, key)
            return put_replacing(client, bucket, key, body, None)
        if refused:
            raise ConcurrentWriteError(
                f"s3://{bucket}/{key} changed while this run was writing it; another run is writing "
                "the same strategy. Nothing was overwritten: rerun once the other run has finished."
            ) from exc
        raise


def list_keys(client, bucket: str, prefix: str) -> list[str]:
    paginator = client.get_paginator("list_objects_v2")
    return [
        obj["Key"]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]


def list_range(client, bucket: str, prefix: str, first: str, last: str, max_pages: int) -> set[str] | None:
    """Keys under `prefix` from `first` to `last` inclusive (plus a few neighbours), or None when that
    takes more than `max_pages` LIST requests. `StartAfter` is `first` less its last character, which
    sorts before `first` and after every key that sorts before it and could matter."""
    found: set[str] = set()
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, StartAfter=first[:-1], PaginationConfig={"PageSize": 1000}
    )
    for number, page in enumerate(pages, start=1):
        keys = [item["Key"] for item in page.get("Contents", [])]
        found.update(keys)
        if not keys or keys[-1] >= last:
            return found
        if number >= max_pages:
            return None
    return found


@contextlib.contextmanager
def local_copy(client, uri: str, directory: Path) -> Iterator[Path | None]:
    """A local file holding `uri` for the duration of the block (None when it does not exist): a local
    path as it is; an s3:// object streamed to a temporary file in `directory` with one GET (never held
    in memory whole) and deleted afterwards."""
    if not uri.startswith("s3://"):
        yield Path(uri) if Path(uri).exists() else None
        return
    bucket, key = parse_s3_uri(uri)
    Path(directory).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".download-", delete=True) as handle:
        for attempt in range(BODY_READ_ATTEMPTS):
            try:
                body = client.get_object(Bucket=bucket, Key=key)["Body"]
                handle.seek(0)
                handle.truncate()
                for chunk in body.iter_chunks(DOWNLOAD_CHUNK):
                    handle.write(chunk)
                handle.flush()
                break
            except botocore.exceptions.ClientError as exc:
                if is_missing(exc):
                    yield None
                    return
                raise
            except BODY_ERRORS:
                if attempt == BODY_READ_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        yield Path(handle.name)


def read_uri(client, uri: str) -> bytes | None:
    """Bytes of a local path or s3:// URI; None when it does not exist."""
    if uri.startswith("s3://"):
        bucket, key = parse_s3_uri(uri)
        return get_object(client, bucket, key).body
    try:
        with open(uri, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def list_etags(
    client, bucket: str, prefix: str, after: str | None, until: str | None
) -> tuple[dict[str, str], int]:
    """(key -> ETag, LIST requests made) of the keys under `prefix` in `(after, until]` (None: from the
    start, to the end): one request per 1,000 keys, so key ranges can be listed side by side."""
    found: dict[str, str] = {}
    extra = {"StartAfter": after} if after else {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}, **extra
    )
    requests = 0
    for page in pages:
        requests += 1
        for item in page.get("Contents", []):
            if until is not None and item["Key"] > until:
                return found, requests
            found[item["Key"]] = item["ETag"]
    return found, requests
