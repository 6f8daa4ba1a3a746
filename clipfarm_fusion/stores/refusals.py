"""Re-fusion requests: videos a strategy must fuse again although nothing in the state says so (a
re-embedding upstream with the same dims, an option change, a re-fusion on purpose).

A request is one Parquet object under `<root>/fused/<s>/refuse/` listing video ids, with its reason
(`refuse`, `changed_upstream`) and the state table's version when it was made. Every run's plan LISTs
the prefix (one request, an empty answer on a normal day) and fuses the ids still pending: those whose
state row no commit has written since that version. Done-ness is read from the state table's own
history, never from clocks or from the request being updated, so a run killed anywhere redoes nothing
that was committed, and a request with nothing pending is removed by the next plan.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import StoreError
from clipfarm_fusion.stores import s3_faults, s3io

REFUSE = "refuse"
CHANGED_UPSTREAM = "changed_upstream"
REASONS = (REFUSE, CHANGED_UPSTREAM)
_META = b"clipfarm.refusal"


@dataclass(frozen=True)
class Request:
    """One request: which videos, why, and the state version after which a commit of a video's row
    counts as having fused it again (None: the state table did not exist yet)."""

    key: str
    ids: pa.Array
    reason: str
    state_version: int | None
    requested_at: str


def write(
    client,
    bucket: str,
    layout: Layout,
    strategy: str,
    ids: Sequence[str],
    reason: str,
    state_version: int | None,
) -> Request:
    """Store a request for `ids` (deduplicated, sorted); its key sorts by creation time."""
    if reason not in REASONS:
        raise ValueError(f"unknown re-fusion reason {reason!r}")
    now = datetime.now(UTC)
    unique = pa.array(sorted(set(ids)), pa.string())
    meta = {
        "reason": reason,
        "state_version": state_version,
        "requested_at": now.isoformat(timespec="seconds"),
    }
    table = pa.table({"video_id": unique}).replace_schema_metadata({_META: json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    key = f"{layout.refuse_prefix(strategy)}{now.strftime('%Y%m%dT%H%M%S')}-{digest(unique, reason)}.parquet"
    client.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return Request(key, unique, reason, state_version, meta["requested_at"])


def digest(ids: pa.Array, reason: str) -> str:
    """A short hash of a request's reason and (sorted, unique) ids: the same request made twice (a
    re-fusion started again after a kill) is found and continued, not made anew, since a new request
    would count the videos the first one already re-fused as pending again."""
    return hashlib.sha256("\n".join([reason, *ids.to_pylist()]).encode()).hexdigest()[:12]


def find(requests: Sequence[Request], ids: Sequence[str], reason: str) -> Request | None:
    """The open request for exactly these ids and this reason, if there is one."""
    wanted = digest(pa.array(sorted(set(ids)), pa.string()), reason)
    return next((r for r in requests if r.key.endswith(f"-{wanted}.parquet")), None)


def read_open(client, bucket: str, layout: Layout, strategy: str, patience_s: float) -> list[Request]:
    """Every open request of `strategy`, oldest first: one LIST, and a GET per request."""
    prefix = layout.refuse_prefix(strategy)
    keys = s3_faults.with_patience(
        lambda: s3io.list_keys(client, bucket, prefix), f"listing s3://{bucket}/{prefix}", patience_s
    )
    keys = sorted(k for k in keys if k.endswith(".parquet"))
    fetched = s3io.get_many(client, bucket, keys, threads=8, patience_s=patience_s)
    return [_parse(key, fetched[key], bucket) for key in keys if _body(fetched[key]) is not None]


def remove(client, bucket: str, keys: Sequence[str]) -> None:
    """Delete requests that have nothing pending (a request already gone is no error)."""
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def _body(fetched: s3io.Fetched | Exception) -> bytes | None:
    if isinstance(fetched, Exception):
        raise fetched
    return fetched.body


def _parse(key: str, fetched: s3io.Fetched | Exception, bucket: str) -> Request:
    try:
        table = pq.read_table(io.BytesIO(_body(fetched)))
        meta = json.loads(table.schema.metadata[_META])
        return Request(
            key,
            table["video_id"].combine_chunks().cast(pa.string()),
            str(meta["reason"]),
            None if meta["state_version"] is None else int(meta["state_version"]),
            str(meta["requested_at"]),
        )
    except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        raise StoreError(
            f"re-fusion request s3://{bucket}/{key} is unreadable ({exc}): delete it and make the request "
            "again (`clipfarm-fusion refuse`)"
        ) from exc
