"""Exit codes, and the one place that maps an error to its exit code and message."""

from __future__ import annotations

import botocore.exceptions

from clipfarm_fusion.errors import (
    ConcurrentWriteError,
    ConfigError,
    S3UnavailableError,
    SchemaDriftError,
    StoreError,
)
from clipfarm_fusion.read.vectors import BrokenPointerError
from clipfarm_fusion.stores import s3_faults

EXIT_OK, EXIT_USAGE, EXIT_DRIFT, EXIT_CONFLICT, EXIT_BROKEN, EXIT_UNAVAILABLE, EXIT_STORE = (
    0,
    2,
    3,
    4,
    5,
    6,
    7,
)


# Our errors, then botocore's that mean "fix your setup": (type, exit code, message prefix, hint).
_EXITS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (ConfigError, EXIT_USAGE, "error", ""),
    (SchemaDriftError, EXIT_DRIFT, "schema drift", ""),
    (ConcurrentWriteError, EXIT_CONFLICT, "concurrent write", ""),
    (StoreError, EXIT_STORE, "unreadable store", ""),
    (S3UnavailableError, EXIT_UNAVAILABLE, "", ""),
    (BrokenPointerError, EXIT_BROKEN, "broken pointer", ""),
    (
        botocore.exceptions.ProfileNotFound,
        EXIT_USAGE,
        "error",
        "; set AWS_PROFILE to a configured profile or unset it",
    ),
    (
        botocore.exceptions.ParamValidationError,
        EXIT_USAGE,
        "error: S3 rejected a parameter",
        "; check --bucket and --root",
    ),
    (
        botocore.exceptions.NoCredentialsError,
        EXIT_USAGE,
        "error",
        "; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
    ),
)


def exit_for(exc: BaseException) -> tuple[int, str] | None:
    """The one place that maps an error to (exit code, message); None for a bug (let it raise)."""
    verdict = _verdict(exc)
    return None if verdict is None else (verdict[0], s3_faults.redacted(verdict[1]))


def _verdict(exc: BaseException) -> tuple[int, str] | None:
    for kind, code, prefix, hint in _EXITS:
        if isinstance(exc, kind):
            return code, f"{prefix}: {exc}{hint}" if prefix else f"{exc}{hint}"
    if (problem := s3_faults.setup_problem(exc)) is not None:
        return EXIT_USAGE, f"error: {problem}"
    if s3_faults.is_fault(exc):  # any command: an outage is "retry later", never a traceback
        return EXIT_UNAVAILABLE, str(s3_faults.unavailable(exc, "talking to it"))
    return None
