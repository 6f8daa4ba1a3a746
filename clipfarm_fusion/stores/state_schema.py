"""The state table's columns: what the state store writes and what the seed-era import produces.

Kept apart from `state` so that the one-time import (`clipfarm_fusion.legacy`) can build rows of this
schema without importing the store that calls it.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from clipfarm_fusion.core.policy import FAIL_TERMINAL, SUCCESS_FULL, SUCCESS_PLACEHOLDER

STATE_COLUMNS = (
    "video_id",
    "source_hash",
    "processed_at",
    "status",
    "error",
    "artifact_key",
    "vector_id",
    "retry_count",
)
CURSOR_COLUMNS = ("captured_ns", "hash64")  # of the horizon row last processed (null: compare in full)
# The run that last wrote the row (`<run_date>-<hex>`; null for rows imported from a seed-era file): the
# commit tells another run's rows from its own, and a run behind a later one leaves that one's rows alone.
WRITER_COLUMN = "run_id"
SCHEMA = pa.schema(
    [(c, pa.int64() if c == "retry_count" else pa.string()) for c in STATE_COLUMNS]
    + [(c, pa.int64()) for c in CURSOR_COLUMNS]
    + [(WRITER_COLUMN, pa.string())]
)
KNOWN_COLUMNS = ("video_id", *CURSOR_COLUMNS)
TERMINAL = (SUCCESS_FULL, SUCCESS_PLACEHOLDER, FAIL_TERMINAL)


def empty_frame() -> pd.DataFrame:
    """No rows, the state columns (and the cursor columns), indexed by video_id."""
    return to_frame(SCHEMA.empty_table())


def to_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    frame["retry_count"] = frame["retry_count"].fillna(0).astype("int64")
    return frame.set_index("video_id")
