"""Pure: which state rows are a day's failed or waiting items, for `read_failures` and `inspect --failed`.

The summary keeps 10 sample ids per status; the state keeps every item, with the error of its last
attempt and the run that wrote it (`run_id`, `<run_date>-<hex>`). A run leaves an unchanged row alone,
so an item still waiting keeps the run date of the day it started waiting, and every open item (not
terminal) is in each later day's delta. So a day's failed or waiting items, as the state holds them
now, are the open items whose row a run of that day or an earlier one wrote, and the items that day's
run made `fail_terminal`. While that day is the newest fused, they are exactly the items its summary
counts under those statuses (an invalid video id never reaches the state: the summary's samples name
those); an item a later day fused, or failed again, is no longer listed under the older day.
"""

from __future__ import annotations

import pandas as pd

from clipfarm_fusion.core import policy
from clipfarm_fusion.core.worklist import run_date_of

FAILED_OR_WAITING: tuple[str, ...] = (
    policy.FAIL,
    policy.FAIL_TERMINAL,
    policy.MISSING_REQUIRED,
    policy.MISSING_TEXT_UNAVAILABLE,
    policy.MISSING_TEXT_PENDING,
)
COLUMNS: tuple[str, ...] = ("video_id", "status", "error", "retry_count", "run_date", "processed_at")


def failed_or_waiting(rows: pd.DataFrame, run_date: str | None = None) -> pd.DataFrame:
    """`rows` (state rows with `run_id`) in a failed or waiting status, those of `run_date`
    (YYYY-MM-DD) when given, as `COLUMNS` (`run_date`: the day of the run that wrote the row, empty
    for a seed-era row), sorted by status in `FAILED_OR_WAITING` order, then video_id."""
    written = run_date_of(rows["run_id"])
    keep = rows["status"].isin(FAILED_OR_WAITING)
    if run_date is not None:
        terminal = rows["status"] == policy.FAIL_TERMINAL
        keep &= (~terminal & (written <= run_date)) | (terminal & (written == run_date))
    order = {status: rank for rank, status in enumerate(FAILED_OR_WAITING)}
    chosen = rows.assign(run_date=written)[keep]
    return (
        chosen.assign(_rank=chosen["status"].map(order))
        .sort_values(["_rank", "video_id"], ignore_index=True)
        .loc[:, list(COLUMNS)]
    )
