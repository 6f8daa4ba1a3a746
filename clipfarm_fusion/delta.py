"""Pure: which videos of the horizon need work for one strategy (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd

from .policy import FAIL_TERMINAL, SUCCESS_FULL, SUCCESS_PLACEHOLDER

NEW = "new"
HASH_CHANGED = "hash_changed"
NOT_TERMINAL = "not_terminal"
UPGRADE_CHECK = "upgrade_check"


def compute(
    horizon: pd.DataFrame, state: pd.DataFrame, recheck: Collection[str] | None = None
) -> pd.DataFrame:
    """Horizon rows that need work, with `reason`, `prior_status` and `retry_base`.

    - no state row -> new; source_hash changed -> hash_changed (retries start again at 0);
    - status not terminal -> not_terminal;
    - success_text_placeholder -> upgrade_check: fused again only if its text has since appeared; only
      the placeholders in `recheck` (those the text stage has news for), or all when it is None;
    - success_full and fail_terminal with the same hash are done.
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
    result = known.assign(
        reason=reason,
        prior_status=status.where(has_row, None),
        retry_base=known["retry_count"].where(same_hash, 0).fillna(0).astype("int64"),
    )
    return result[result["reason"] != ""].drop(columns=["source_hash_state", "status", "retry_count"])
