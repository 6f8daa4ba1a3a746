"""Pure: THE rule that picks "the latest row per key", shared by every place that needs one.

    metadata.dedupe_latest   key video_id                 instant captured_ts   ties: source_hash, captured_at
    readback.latest_per_video key video_id                instant captured_at   ties: fused_at, fused_key

Within a key the winner is the row with, in this order:

1. the latest instant. Instants are timestamps parsed as ISO 8601 and compared in UTC (`...Z`,
   `...+00:00` and `...+02:00` are the same clock, whatever the spelling; a value without an offset
   is taken as UTC; surrounding whitespace is ignored). An empty or unparseable value (or one outside
   1677-2262, which nanoseconds cannot hold) counts as the OLDEST instant, so any dated row beats it;
2. then the largest value of each tie-break column in turn (plain string order; a null loses to any
   value);
3. then, on a full tie, the row that comes FIRST in the input. Callers that care put the row that
   must stay first (the manifest puts its existing rows before the new ones), so re-merging the same
   rows changes nothing.

Only numpy, pandas (for the ISO 8601 parser) and pyarrow (for the sort); no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

OLDEST = np.iinfo(np.int64).min  # the instant of an empty or unparseable timestamp (NaT's int64 value)


def _strings(values: Any) -> pd.Series:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_pandas()
    series = pd.Series(values, dtype="string").reset_index(drop=True)
    return series.str.strip()


def parse_utc(values: Any) -> pd.DatetimeIndex:
    """ISO 8601 strings -> UTC timestamps (ns); empty, null or unparseable -> NaT.

    Surrounding whitespace is ignored; a value without an offset is taken as UTC; dates alone
    (`2026-03-01`) are midnight UTC.
    """
    text = _strings(values)
    parsed = pd.to_datetime(text.where(text != ""), utc=True, errors="coerce", format="ISO8601")
    return pd.DatetimeIndex(parsed).as_unit("ns")


def instants(values: Any) -> np.ndarray:
    """`(N,)` int64 nanoseconds since the epoch (UTC), the order the rule compares; OLDEST for a missing one.

    Strings (str / pyarrow string arrays) are parsed with `parse_utc`; datetime values (e.g. a
    `datetime64[ns, UTC]` column already parsed by `parse_utc`) are used as they are.
    """
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if pa.types.is_timestamp(values.type):
            values = values.to_pandas()
        else:
            return parse_utc(values).asi8
    series = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        index = pd.DatetimeIndex(series)
        index = index.tz_convert("UTC") if index.tz is not None else index.tz_localize("UTC")
        return index.as_unit("ns").asi8
    return parse_utc(series).asi8


def _arrow(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, pd.Series | pd.Index):
        return pa.array(values.to_numpy(dtype=object, na_value=None), from_pandas=True)
    return pa.array(np.asarray(values, dtype=object), from_pandas=True)


def _sortable(name: str, column: pa.Array, order: str) -> list[tuple[str, pa.Array, str]]:
    """`column` as null-free sort columns: `(name, array, order)`; a null sorts after every value in
    `order` (it loses as a tie-break, and null keys group together)."""
    if column.null_count == 0:
        return [(name, column, order)]
    valid = pc.is_valid(column).cast(pa.int8())
    present = [(f"{name}_valid", valid, "descending")]
    if column.null_count == len(column):
        return present
    filler = column.drop_null()[0]  # any value of the column's type; the indicator orders the nulls
    return [*present, (name, pc.fill_null(column, filler), order)]


def latest_index(keys: Sequence[Any], row_instants: Any, tiebreaks: Sequence[Any] = ()) -> np.ndarray:
    """Indices `(K,)` of the winning row per key, ordered by key (ascending, null keys last).

    - `keys`: one or more key columns (arrays of equal length N; e.g. `[video_id]` or
      `[video_id, source_hash]`); rows are grouped on all of them, two nulls being equal;
    - `row_instants`: `(N,)` int64 from `instants()` (OLDEST for a missing one);
    - `tiebreaks`: columns compared after the instant, the largest wins, a null loses;
    - a full tie keeps the row that comes first in the input.
    """
    count = len(row_instants)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    key_columns: list[tuple[str, pa.Array, str]] = []
    for i, key in enumerate(keys):
        key_columns += _sortable(f"k{i}", _arrow(key), "ascending")
    columns = [*key_columns, ("t", pa.array(np.asarray(row_instants, dtype=np.int64)), "descending")]
    for i, tiebreak in enumerate(tiebreaks):
        columns += _sortable(f"b{i}", _arrow(tiebreak), "descending")
    columns.append(("p", pa.array(np.arange(count, dtype=np.int64)), "ascending"))
    table = pa.table({name: values for name, values, _ in columns})
    order = pc.sort_indices(table, sort_keys=[(name, how) for name, _, how in columns])
    first = np.ones(count, dtype=bool)
    if count > 1:
        starts = np.zeros(count - 1, dtype=bool)
        for _, values, _ in key_columns:
            ordered = values.take(order)
            starts |= pc.not_equal(ordered.slice(1), ordered.slice(0, count - 1)).to_numpy(
                zero_copy_only=False
            )
        first[1:] = starts
    return order.to_numpy()[first]
