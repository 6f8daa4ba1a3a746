"""The re-fusion requests a run's plan honours: per strategy, the videos its open requests still name
(see `stores.refusals`), and the requests that have nothing left to do."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.core import worklist
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.run.summary import StrategySummary
from clipfarm_fusion.stores import lake, refusals, state, state_schema


@dataclass(frozen=True)
class Requested:
    """A strategy's open requests and, per request key, the ids it still names: those whose state row
    no commit has written since the request was made."""

    requests: tuple[refusals.Request, ...]
    pending: dict[str, pa.Array]

    @property
    def ids(self) -> pa.Array:
        """Every pending id, once."""
        arrays = list(self.pending.values())
        return pc.unique(pa.concat_arrays(arrays)) if arrays else pa.array([], pa.string())

    def reasons(self) -> dict[str, str]:
        """video_id -> reason; where two requests name a video, the older one's."""
        reasons: dict[str, str] = {}
        for request in self.requests:
            for video_id in self.pending[request.key].to_pylist():
                reasons.setdefault(video_id, request.reason)
        return reasons

    def finished(self, fusable: pa.Array) -> list[str]:
        """Keys of the requests none of whose pending ids can still be fused (`fusable`: the ids of the
        horizon this run sees): all done, or naming only videos the horizon no longer has."""
        return [
            key for key, ids in self.pending.items() if not pc.any(pc.is_in(ids, value_set=fusable)).as_py()
        ]


NONE = Requested((), {})


def read(
    client, bucket: str, layout: Layout, name: str, store: state.StateStore, patience_s: float
) -> Requested:
    """The strategy's open requests and what each still names: one LIST (an empty answer on a normal
    day), then a GET per request, the state rows of their ids, and the commits since each was made."""
    requests = refusals.read_open(client, bucket, layout, name, patience_s)
    if not requests:
        return NONE
    pending: dict[str, pa.Array] = {}
    for request in requests:
        rows = store.rows_for(request.ids)
        done_by = _writers_since(store, request.state_version)
        writers = rows[state_schema.WRITER_COLUMN].reindex(request.ids.to_pylist())
        still = ~writers.isin(done_by).to_numpy()
        pending[request.key] = request.ids.filter(pa.array(still))
    return Requested(tuple(requests), pending)


def _writers_since(store: state.StateStore, version: int | None) -> set[str]:
    """The run ids of the state commits after `version` (every commit when the table was new)."""
    if store.table is None:
        return set()
    since = -1 if version is None else version
    return {run_id for _, run_id in lake.writes_since(store.table, since) if run_id is not None}


def honour(
    client,
    bucket: str,
    name: str,
    requests: Requested,
    horizon: pd.DataFrame,
    prior: pd.DataFrame,
    delta: pd.DataFrame,
    run_date: date,
    summary: StrategySummary,
    log: logging.Logger,
) -> pd.DataFrame:
    """The delta with the videos the open re-fusion requests still name; the requests with nothing
    left are removed (their work was committed, or their videos left the horizon)."""
    reasons = requests.reasons()
    delta = worklist.with_requests(delta, horizon, prior, reasons, run_date.isoformat())
    summary.requests_pending = len(reasons)
    summary.requested = {
        reason: int(count)
        for reason, count in delta["reason"].value_counts().items()
        if reason in refusals.REASONS
    }
    finished = requests.finished(pa.array(horizon["video_id"].tolist(), pa.string()))
    if finished:
        refusals.remove(client, bucket, finished)
    log.info(
        "%s: %d videos named by %d open re-fusion request(s), %d of them in this delta %s; %d request(s) done",
        name,
        len(reasons),
        len(requests.requests),
        sum(summary.requested.values()),
        summary.requested,
        len(finished),
    )
    return delta
