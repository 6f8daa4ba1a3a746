"""The re-fusion requests a run's plan honours: per strategy, the videos its open requests still name
(see `stores.refusals`), and the requests that have nothing left to do."""

from __future__ import annotations

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

    def reasons(self, among: pa.Array) -> dict[str, str]:
        """video_id -> reason for the pending ids among `among` (one id range of the plan, so the dict
        stays bounded); where two requests name a video, the older one's."""
        reasons: dict[str, str] = {}
        for request in self.requests:
            ids = self.pending[request.key]
            for video_id in ids.filter(pc.is_in(ids, value_set=among)).to_pylist():
                reasons.setdefault(video_id, request.reason)
        return reasons

    def live(self, fusable: pa.Array) -> set[str]:
        """Keys of the requests with a pending id among `fusable` (the ids of the horizon, or of one id
        range of it): those with none in any range are done, or name only videos the horizon lost."""
        return {key for key, ids in self.pending.items() if pc.any(pc.is_in(ids, value_set=fusable)).as_py()}


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
    requests: Requested,
    horizon: pd.DataFrame,
    prior: pd.DataFrame,
    delta: pd.DataFrame,
    run_date: date,
    summary: StrategySummary,
) -> tuple[pd.DataFrame, set[str]]:
    """The delta of one id range of the horizon with the videos the open re-fusion requests still name,
    counted in `summary`; and the keys of the requests with a video in this range (see `finish`)."""
    ids = pa.array(horizon["video_id"].tolist(), pa.string())
    delta = worklist.with_requests(delta, horizon, prior, requests.reasons(ids), run_date.isoformat())
    for reason, count in delta["reason"].value_counts().items():
        if reason in refusals.REASONS:
            summary.requested[reason] = summary.requested.get(reason, 0) + int(count)
    return delta, requests.live(ids)


def finish(
    client, bucket: str, name: str, requests: Requested, live: set[str], summary: StrategySummary, log
) -> None:
    """After every id range is planned: remove the requests with nothing left (`live`: the keys some
    range still fuses for; the others' work was committed, or their videos left the horizon)."""
    summary.requests_pending = len(requests.ids)
    finished = [key for key in requests.pending if key not in live]
    if finished:
        refusals.remove(client, bucket, finished)
    log.info(
        "%s: %d videos named by %d open re-fusion request(s), %d of them in this delta %s; %d request(s) done",
        name,
        summary.requests_pending,
        len(requests.requests),
        sum(summary.requested.values()),
        summary.requested,
        len(finished),
    )
