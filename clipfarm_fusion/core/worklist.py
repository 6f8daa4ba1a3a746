"""Pure: which videos of the horizon need work for one strategy, and what a run behind a later one
leaves alone.

A run for `run_date` never moves a video backwards: a video whose state a later-dated run wrote from a
newer horizon row (a later capture, or another URL) is not fused again from this run's older row, and
an open failure that a later-dated run already attempted is not retried by an earlier one (its retry is
spent). New videos, and placeholders whose text has since appeared (same row, better vector), are
fused whatever the date."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd

from clipfarm_fusion.core import latest
from clipfarm_fusion.core.policy import FAIL_TERMINAL, SUCCESS_FULL, SUCCESS_PLACEHOLDER

NEW = "new"
HASH_CHANGED = "hash_changed"
NOT_TERMINAL = "not_terminal"
UPGRADE_CHECK = "upgrade_check"


def run_date_of(run_ids: pd.Series) -> pd.Series:
    """The run_date part of state rows' `run_id` (`2026-03-05-1a2b…`); empty where there is none."""
    return run_ids.fillna("").astype(str).str.slice(0, 10)


def _column(state: pd.DataFrame, ids: pd.Series, name: str) -> pd.Series:
    """`state[name]` aligned with `ids` (null where the video or the column is absent)."""
    if name not in state:
        return pd.Series(None, index=range(len(ids)), dtype=object)
    return state[name].reindex(ids).reset_index(drop=True)


def ahead(horizon: pd.DataFrame, state: pd.DataFrame, run_date: str) -> np.ndarray:
    """Per horizon row: whether a later-dated run processed this video from a newer form than this row
    (a later capture; or, where the state does not know the capture, another URL), so that a run for
    `run_date` must leave it alone. `state` is indexed by video_id."""
    ids = horizon["video_id"]
    later = (run_date_of(_column(state, ids, "run_id")) > run_date).to_numpy()
    captured = pd.array(_column(state, ids, "captured_ns"), dtype="Int64")
    unknown = np.asarray(captured.isna())
    row_ns = (
        latest.instants(horizon["captured_ts"])
        if "captured_ts" in horizon
        else np.full(len(horizon), latest.OLDEST, dtype=np.int64)
    )
    newer = np.asarray(captured.fillna(latest.OLDEST), dtype=np.int64) > row_ns
    other_url = _column(state, ids, "source_hash").to_numpy(dtype=object) != horizon["source_hash"].to_numpy(
        dtype=object
    )
    return later & (newer | (unknown & other_url))


def compute(
    horizon: pd.DataFrame,
    state: pd.DataFrame,
    recheck: Collection[str] | None = None,
    run_date: str | None = None,
) -> pd.DataFrame:
    """Horizon rows that need work, with `reason`, `prior_status` and `retry_base`.

    - no state row -> new; source_hash changed -> hash_changed (retries start again at 0);
    - status not terminal -> not_terminal;
    - success_text_placeholder -> upgrade_check: fused again only if its text has since appeared; only
      the placeholders in `recheck` (those the text stage has news for), or all when it is None;
    - success_full and fail_terminal with the same hash are done;
    - with `run_date`, nothing a later-dated run holds in a newer form (`ahead`), and no retry of a
      failure a later-dated run attempted.
    `horizon` has one row per video_id; `state` is indexed by video_id.
    """
    if state.empty:  # every video is new (and pandas cannot join Arrow-backed strings to nothing)
        return horizon.assign(reason=NEW, prior_status=None, retry_base=0).astype({"retry_base": "int64"})
    known = horizon.merge(
        state[["source_hash", "status", "retry_count"]],
        left_on="video_id",
        right_index=True,
        how="left",
        suffixes=("", "_state"),
    )
    has_row = known["status"].notna() | known["source_hash_state"].notna()
    same_hash = has_row & (known["source_hash_state"] == known["source_hash"])
    status = known["status"].fillna("")
    reason = pd.Series("", index=known.index, dtype=object)
    reason[~has_row] = NEW
    reason[has_row & ~same_hash] = HASH_CHANGED
    open_status = ~status.isin([SUCCESS_FULL, SUCCESS_PLACEHOLDER, FAIL_TERMINAL])
    reason[same_hash & open_status] = NOT_TERMINAL
    placeholder = same_hash & (status == SUCCESS_PLACEHOLDER)
    if recheck is not None:
        placeholder &= known["video_id"].isin(list(recheck))
    reason[placeholder] = UPGRADE_CHECK
    if run_date is not None:
        attempted_later = (run_date_of(_column(state, horizon["video_id"], "run_id")) > run_date).to_numpy()
        reason[ahead(horizon, state, run_date) | ((reason == NOT_TERMINAL).to_numpy() & attempted_later)] = ""
    result = known.assign(
        reason=reason,
        prior_status=status.where(has_row, None),
        retry_base=known["retry_count"].where(same_hash, 0).fillna(0).astype("int64"),
    )
    return result[result["reason"] != ""].drop(columns=["source_hash_state", "status", "retry_count"])


def with_requests(
    delta: pd.DataFrame,
    horizon: pd.DataFrame,
    state: pd.DataFrame,
    reasons: Mapping[str, str],
    run_date: str | None = None,
) -> pd.DataFrame:
    """`delta` plus the horizon's videos that a re-fusion request names (`reasons`: video_id -> the
    request's reason), each under that reason with its retries starting again at 0, whatever its
    state says; a video already in `delta` takes the request's reason. As in `compute`, a run behind a
    later one leaves alone what that one holds in a newer form (`ahead`): it stays requested."""
    if not reasons:
        return delta
    rows = horizon[horizon["video_id"].isin(list(reasons))]
    if run_date is not None and not state.empty:
        rows = rows[~ahead(rows, state, run_date)]
    if rows.empty:
        return delta
    status = _column(state, rows["video_id"], "status") if not state.empty else None
    added = rows.assign(
        reason=rows["video_id"].map(reasons).to_numpy(dtype=object),
        prior_status=None if status is None else status.to_numpy(dtype=object),
        retry_base=0,
    ).astype({"retry_base": "int64"})
    kept = delta[~delta["video_id"].isin(rows["video_id"])]
    return pd.concat([kept, added[list(kept.columns)]], ignore_index=True) if len(kept) else added
