"""S3 access: one client factory from the standard AWS configuration, concurrent get-or-missing,
and conditional puts. Endpoint and credentials come only from boto3's own configuration chain
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, `AWS_DEFAULT_REGION`), so the same code runs
against real S3, MinIO and a moto server.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import boto3
import botocore.exceptions
from botocore.config import Config

from .errors import ConcurrentWriteError, ConfigError

BODY_READ_ATTEMPTS = 4
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_BODY_ERRORS = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ConnectionClosedError,
)


def make_client(max_pool_connections: int = 32):
    """The S3 client every module uses: standard retry mode and a pool as wide as our thread pool."""
    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=max(10, max_pool_connections),
        connect_timeout=10,
        read_timeout=60,
    )
    region = boto3.session.Session().region_name or "us-east-1"
    return boto3.client("s3", config=config, region_name=region)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ConfigError(f"bad S3 URI {uri!r}: expected s3://BUCKET/KEY")
    return bucket, key


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: Exception) -> bool:
    return isinstance(exc, botocore.exceptions.ClientError) and error_code(exc) in _MISSING_CODES


def is_precondition_failed(exc: Exception) -> bool:
    return isinstance(exc, botocore.exceptions.ClientError) and (
        error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}
        or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)
    )


@dataclass(frozen=True)
class Fetched:
    """One object read into memory: `body` None means the key does not exist."""

    body: bytes | None
    etag: str | None = None


def get_object(client, bucket: str, key: str, if_none_match: str | None = None) -> Fetched | None:
    """GET into memory; 404 -> Fetched(None); 304 (unchanged since `if_none_match`) -> None.

    botocore retries the request itself; a body that breaks off mid-stream is retried here,
    because botocore's retry loop has already returned by the time the body is read.
    """
    extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
    for attempt in range(BODY_READ_ATTEMPTS):
        try:
            response = client.get_object(Bucket=bucket, Key=key, **extra)
            return Fetched(response["Body"].read(), response.get("ETag"))
        except botocore.exceptions.ClientError as exc:
            if is_missing(exc):
                return Fetched(None)
            if error_code(exc) in {"304", "NotModified"}:
                return None
            raise
        except _BODY_ERRORS:
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
) -> dict[str, bytes | None | Exception]:
    """GET every key concurrently: bytes, None when missing, or the exception that item hit.

    An error is returned, not raised, so one bad object fails one item and not the run.
    """

    def fetch(key: str) -> tuple[str, bytes | None | Exception]:
        try:
            return key, get_object(client, bucket, key).body
        except Exception as exc:  # noqa: BLE001 - per-item failure is data
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
        if is_precondition_failed(exc) and (etag := _our_earlier_attempt(client, bucket, key, body)):
            return etag
        if is_precondition_failed(exc) or (expected_etag and is_missing(exc)):
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
