"""Re-fusion on purpose: which videos (`--ids`, `--dates`, `--all`), the request that names them, and
how far it has come.

The request (`stores.refusals`) is the whole mechanism: the runs that follow fuse what it names as part
of their delta, fanned out in chunks like any day, each commit recording its videos, so a re-fusion
killed anywhere continues from what was committed. Making the same request again continues the open
one instead of starting over.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow.compute as pc

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read.vectors import latest_per_video, load_manifest
from clipfarm_fusion.run import requested
from clipfarm_fusion.stores import refusals, s3io, state


def ids_from_file(path: Path) -> list[str]:
    """One video id per line; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--ids {path}: cannot read it ({exc.strerror or exc})") from None
    ids = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise ConfigError(f"--ids {path}: no video ids in it (one per line)")
    return ids


def parse_dates(value: str) -> tuple[date, date]:
    """`A..B` (inclusive ISO dates), or one date for a single day; ConfigError otherwise."""
    first, _, last = value.partition("..")
    try:
        return date.fromisoformat(first), date.fromisoformat(last or first)
    except ValueError:
        raise ConfigError(f"dates {value!r} is not a date range A..B (YYYY-MM-DD..YYYY-MM-DD)") from None


def published_ids(
    client, bucket: str, root: str, strategy: str, dates: tuple[date, date] | None
) -> list[str]:
    """The videos with a published vector: all of them, or those whose latest row's shard is under a
    `date=` from `dates[0]` to `dates[1]` (the run dates that fused them)."""
    rows = latest_per_video(load_manifest(client, bucket, root, strategy))
    if dates is not None:
        first, last = dates
        if last < first:
            raise ConfigError(f"--dates {first}..{last}: the range ends before it starts")
        shard_date = pc.struct_field(
            pc.extract_regex(rows["fused_key"], r"/date=(?P<d>\d{4}-\d{2}-\d{2})/"), "d"
        )
        keep = pc.and_(
            pc.greater_equal(shard_date, first.isoformat()), pc.less_equal(shard_date, last.isoformat())
        )
        rows = rows.filter(pc.fill_null(keep, False))
    return rows["video_id"].to_pylist()


def make_request(
    client, bucket: str, root: str, strategy: str, ids: list[str], reason: str
) -> tuple[refusals.Request, bool]:
    """The open request for `ids` (True: it was already there and continues), else a new one."""
    layout = Layout(root.strip("/"))
    open_now = refusals.read_open(client, bucket, layout, strategy, s3io.DEFAULT_PATIENCE_S)
    found = refusals.find(open_now, ids, reason)
    if found is not None:
        return found, True
    store = _store(client, bucket, layout, strategy)
    return refusals.write(client, bucket, layout, strategy, ids, reason, store.version), False


@dataclass(frozen=True)
class Progress:
    total: int
    pending: int

    @property
    def done(self) -> int:
        return self.total - self.pending


def progress(client, bucket: str, root: str, strategy: str, request: refusals.Request) -> Progress:
    """How many of the request's videos have been fused again since it was made (committed)."""
    layout = Layout(root.strip("/"))
    open_now = refusals.read_open(client, bucket, layout, strategy, s3io.DEFAULT_PATIENCE_S)
    current = next((r for r in open_now if r.key == request.key), None)
    if current is None:  # done, and removed by a plan
        return Progress(len(request.ids), 0)
    store = _store(client, bucket, layout, strategy)
    pending = requested.read(client, bucket, layout, strategy, store, s3io.DEFAULT_PATIENCE_S).pending
    return Progress(len(request.ids), len(pending.get(request.key, [])))


def _store(client, bucket: str, layout: Layout, strategy: str) -> state.StateStore:
    return state.open_store(
        client, bucket, layout, strategy, Path(tempfile.gettempdir()), s3io.DEFAULT_PATIENCE_S
    )
