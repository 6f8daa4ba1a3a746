"""How S3 answers are classified, for boto3 and for delta-rs alike: a missing object, a fault that
patience may ride out (an outage past it stops the run, exit 6), and a setup problem no retry can change
(refused credentials, a missing bucket: exit 2). Every module asks these questions here, so a new
server's way of saying the same thing is taught in one place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import botocore.exceptions
from deltalake.exceptions import DeltaError

from clipfarm_fusion.errors import ConfigError, S3UnavailableError

T = TypeVar("T")

log = logging.getLogger(__name__)
_FAULT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
}
_FAULT_ERRORS = (
    botocore.exceptions.ConnectionError,  # endpoint unreachable, connection closed, connect/read timeouts
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
)
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
BODY_ERRORS = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ConnectionClosedError,
)


# S3 refusing who we are, not what we asked: the credentials are wrong, expired or not allowed.
CREDENTIAL_CODES = (
    "ExpiredToken",
    "ExpiredTokenException",
    "TokenRefreshRequired",
    "InvalidToken",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AccessDenied",
)
# delta-rs names the S3 error code in its message when the answer had a body; a HEAD's has none.
_DELTA_RS_REFUSED = ("403 Forbidden", "lacked the necessary privileges")

_DELTA_RS_FAULTS = (
    "Generic S3 error",
    "error sending request",
    "HTTP error",
    "Connection refused",
    "timed out",
)


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: Exception) -> bool:
    return isinstance(exc, botocore.exceptions.ClientError) and error_code(exc) in _MISSING_CODES


def setup_problem(exc: BaseException, bucket: str | None = None) -> ConfigError | None:
    """The ConfigError (exit 2) for an answer that no retry can change, from boto3 or from delta-rs: S3
    refused the credentials (wrong, expired, or not allowed), or the bucket does not exist. None for
    anything else. The message names the cause and what to do, never a secret."""
    code = _answer_code(exc)
    where = f"s3://{bucket}" if bucket else "the bucket"
    if code in CREDENTIAL_CODES or (code == "" and _delta_rs_text(exc, _DELTA_RS_REFUSED)):
        return ConfigError(
            f"S3 refused the credentials for {where} ({code or '403 Forbidden'}): they are wrong, expired or "
            "not allowed there. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role "
            "this runs as, and refresh an expired session token; nothing was written"
        )
    if code == "NoSuchBucket":
        return ConfigError(
            f"{where} does not exist (NoSuchBucket): check --bucket (or CLIPFARM_BUCKET) and "
            "AWS_ENDPOINT_URL; nothing was written"
        )
    return None


def redacted(message: str) -> str:
    """`message` without the secret key or session token of the environment, should an error from
    below ever quote one."""
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(name)
        if secret and len(secret) >= 8:
            message = message.replace(secret, f"<{name}>")
    return message


def _answer_code(exc: BaseException) -> str:
    """The S3 error code of a boto3 ClientError, or the one a delta-rs error quotes; "" when none."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return error_code(exc)
    if isinstance(exc, (OSError, DeltaError)):
        return next((c for c in (*CREDENTIAL_CODES, "NoSuchBucket") if f"<Code>{c}</Code>" in str(exc)), "")
    return ""


def _delta_rs_text(exc: BaseException, markers: tuple[str, ...]) -> bool:
    return isinstance(exc, (OSError, DeltaError)) and any(marker in str(exc) for marker in markers)


def is_fault(exc: BaseException) -> bool:
    """An infrastructure fault (the connection, a timeout, a 5xx or throttling answer), as opposed to
    an answer about the object itself: faults are never recorded against an item. Refused credentials
    and a missing bucket are no fault (`setup_problem`): waiting would not change them."""
    if setup_problem(exc) is not None:
        return False
    if isinstance(exc, _FAULT_ERRORS):
        return True
    if _delta_rs_text(exc, _DELTA_RS_FAULTS):
        return True  # delta-rs (the lake tables' own S3 client) names the HTTP failure in its message
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error_code(exc) in _FAULT_CODES or status >= 500 or status == 429
    return False


def unavailable(exc: BaseException, what: str) -> S3UnavailableError:
    return S3UnavailableError(
        f"S3 unavailable while {what} ({type(exc).__name__}: {str(exc)[:300]}); the run stopped, nothing was "
        "recorded against any item and no retries were used: retry later (if it persists, check "
        "AWS_ENDPOINT_URL and the network)"
    )


@contextlib.contextmanager
def faults_as_outage(what: str) -> Iterator[None]:
    """Past botocore's own retries (and our patience), a fault is an outage, not a bug and not the
    items: S3UnavailableError, which says what to do."""
    try:
        yield
    except Exception as exc:
        if (problem := setup_problem(exc)) is not None:
            raise problem from exc
        if is_fault(exc):
            raise unavailable(exc, what) from exc
        raise


def with_patience(
    call: Callable[[], T], what: str, patience_s: float, stop: threading.Event | None = None
) -> T:
    """`call()`, riding out infrastructure faults for up to `patience_s` seconds with capped backoff.

    botocore already retries each request, but its retry quota is spent within a second when every
    request fails at once; this outer loop is what carries a run over a blip. Past the patience (or once
    another thread of the same operation gave up, `stop`), S3UnavailableError.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.25
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_fault(exc):
                raise
            if (stop is not None and stop.is_set()) or time.monotonic() + delay > deadline:
                if stop is not None:
                    stop.set()
                raise unavailable(exc, what) from exc
            log.warning("S3 fault while %s (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def is_precondition_failed(exc: Exception) -> bool:
    return isinstance(exc, botocore.exceptions.ClientError) and (
        error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}
        or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)
    )
