"""The project's small exception hierarchy: every error names the item or setting and what to do next."""

from __future__ import annotations


class ClipfarmError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ClipfarmError):
    """Bad usage or configuration: the run cannot start. The CLI maps it to exit code 2."""


class ItemError(ClipfarmError):
    """One video cannot be fused this run; recorded as a failure, the run goes on."""

    def __init__(self, video_id: str, message: str) -> None:
        super().__init__(message)
        self.video_id = video_id
        self.message = message


class SchemaDriftError(ClipfarmError):
    """Most of a run disagrees with the schema lock: stop before writing anything (exit code 3)."""


class ConcurrentWriteError(ClipfarmError):
    """Another writer changed an object we were about to replace; nothing of ours overwrote theirs."""


class StoreError(ClipfarmError):
    """A published store (a lake table, a seed-era file to import, the schema lock) cannot be read: the run stops before it
    writes anything, and the message names the object and how to repair it."""


class S3UnavailableError(ClipfarmError):
    """S3 stayed unreachable (connection errors, timeouts, 5xx or throttling) past the run's patience:
    the run stops with nothing recorded against any item (exit code 6: retry later)."""
