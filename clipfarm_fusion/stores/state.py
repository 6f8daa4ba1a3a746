"""The fusion state: one Delta table per strategy (`<root>/state/fusion_<s>/`), one row per video_id.

A run reads only what it needs: per known video the instant and the 8-byte hash of the horizon row it
last processed (`captured_ns`, `hash64`: two int64 columns beside the state columns, so the horizon scan
can tell new and changed rows from unchanged ones without reading anything else), the open items (status
not terminal), the placeholders the text stage has news for, and the full rows of the day's candidates.
It upserts only the rows that changed (one commit: a replaceWhere for a small day, a MERGE for a large
one), so a commit costs O(delta) and nothing that grows with the corpus is rewritten whole. Each commit records `text_cursor` in the Delta commit's metadata: the text stage's
latest `processed_at` the run looked at, so the next run asks the text stage only what changed since.

Exit 4 (ConcurrentWriteError) means another run committed state for this strategy after this run read
it: this run's rows could describe shards that the other run's rows have replaced, so it publishes no
state and a rerun converges. Compactions are not conflicts.

Seed-era and 0.x installs kept the state in a SQLite file (`fusion_<s>.sqlite`, mirrored to S3). The first
run that finds no table imports that file once (the mirror, else a working copy under --state-dir) and
never writes to it again; until then `read_state` reads it in place (`clipfarm_fusion.legacy`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from clipfarm_fusion.core import latest, metadata
from clipfarm_fusion.core.known import Builder, KnownIndex
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.core.policy import SUCCESS_PLACEHOLDER
from clipfarm_fusion.errors import ConcurrentWriteError
from clipfarm_fusion.stores import lake
from clipfarm_fusion.stores.state_schema import (
    CURSOR_COLUMNS,
    KNOWN_COLUMNS,
    SCHEMA,
    STATE_COLUMNS,
    TERMINAL,
    WRITER_COLUMN,
    empty_frame,
    to_frame,
)

log = logging.getLogger(__name__)


@dataclass
class StateStore:
    """One strategy's state table as a run sees it: the version it read and that version's cursors."""

    location: str
    options: dict[str, str]
    table: DeltaTable | None
    source: str
    version: int | None = None
    text_cursor: str | None = None
    newest_run_date: str | None = None  # the latest run_date any commit of this table was for
    text_due: dict[str, int] | None = None  # late-text placeholders still due: id -> rechecks left
    _survey: tuple[KnownIndex, pa.Array, pa.Array] | None = None

    def _surveyed(self) -> tuple[KnownIndex, pa.Array, pa.Array]:
        """(known, open ids, placeholder ids) from ONE streaming pass over four narrow columns."""
        if self._survey is None:
            empty = pa.array([], pa.string())
            if self.table is None:
                self._survey = (KnownIndex.empty(), empty, empty)
                return self._survey
            known = Builder()
            open_ids, placeholders = [empty], [empty]
            terminal = pa.array(TERMINAL)
            for batch in lake.batches(self.table, [*KNOWN_COLUMNS, "status"]):
                ids, status = batch.column("video_id"), batch.column("status")
                known.add(ids, batch.column("captured_ns"), batch.column("hash64"))
                is_open = pc.invert(pc.fill_null(pc.is_in(status, value_set=terminal), False))
                open_ids.append(ids.filter(is_open))
                placeholders.append(ids.filter(pc.fill_null(pc.equal(status, SUCCESS_PLACEHOLDER), False)))
            self._survey = (known.finish(), pa.concat_arrays(open_ids), pa.concat_arrays(placeholders))
        return self._survey

    def known(self) -> KnownIndex:
        """Every video with a state row, with the instant and hash64 of the horizon row it last
        processed: what the horizon scan compares with (about 25 MB per million videos, no strings)."""
        return self._surveyed()[0]

    def open_ids(self) -> pa.Array:
        """Items that are not terminal: they re-enter the delta every run until they are."""
        return self._surveyed()[1]

    def placeholders(self, among: pa.Array | None = None) -> pa.Array:
        """`success_text_placeholder` items (all of them, or those among `among`)."""
        ids = self._surveyed()[2]
        return ids if among is None else ids.filter(pc.is_in(ids, value_set=among))

    def rows_for(self, ids: pa.Array) -> pd.DataFrame:
        """The state rows of `ids`, indexed by video_id (the prior the delta rules compare with). Ids the
        table does not hold (a day's new videos) cost nothing: when none is held, nothing is read."""
        ids = ids.filter(pa.array(self.known().locate(ids) >= 0)) if len(ids) else ids
        if self.table is None or len(ids) == 0:
            return empty_frame()
        return to_frame(lake.select_ids(self.table, "video_id", ids, SCHEMA))

    def marks_move(self, marks: dict[str, str]) -> bool:
        """Whether the commit metadata `marks` move what this table records (the text cursor, the newest
        run date, the late-text due list): then a commit is worth it even with no changed rows, or every
        later run would ask the text stage about the same rows again."""
        return (
            marks.get("text_cursor") not in (None, self.text_cursor)
            or marks.get("newest_run_date") != self.newest_run_date
            or json.loads(marks.get("text_due", "{}")) != (self.text_due or {})
        )

    def load_marks(self) -> dict[str, object]:
        """Take the newest run date and the late-text due list as the table's newest commits record
        them; returns every mark (`read_marks`), empty without a table."""
        if self.table is None:
            return {}
        marks = read_marks(self.table)
        self.newest_run_date, self.text_due = marks["newest_run_date"], marks["text_due"]
        return marks

    def contested(self, ids: pa.Array) -> list[str]:
        """The ids among `ids` that another run committed since this store's version (empty when none):
        its rows could describe newer shards than ours, so ours must not replace them. A commit without
        our `run_id` metadata (an older version of this package) may have written any row: every id is
        contested then."""
        if self.table is None:
            self.table = lake.open_table(self.location, self.options)
            if self.table is None:
                return []
        self.table.update_incremental()
        since = -1 if self.version is None else self.version
        rivals = {run_id for _, run_id in lake.writes_since(self.table, since)}
        if not rivals or len(ids) == 0:
            return []
        if None in rivals:
            return ids.to_pylist()
        held = lake.select_ids(
            self.table, "video_id", ids, pa.schema([SCHEMA.field("video_id"), SCHEMA.field(WRITER_COLUMN)])
        )
        return held.filter(pc.is_in(held[WRITER_COLUMN], value_set=pa.array(sorted(rivals))))[
            "video_id"
        ].to_pylist()

    def commit(self, rows: pa.Table | list[dict], cursors: dict[str, str]) -> None:
        """Upsert `rows` (SCHEMA's columns) on video_id (one commit: a replaceWhere, or a MERGE for a large
        day, `lake.is_small`) with the run's commit metadata (`cursors`: text_cursor, run_id, ...). The
        caller holds the strategy's commit lease and has checked `contested` first; ConcurrentWriteError
        when another run's commit still landed on the same rows."""
        source = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=SCHEMA)
        if self.table is None:
            self.table, created = lake.create(self.location, SCHEMA, self.options)
            if not created:
                raise self._conflict(["CREATE"])
            self.version = self.table.version()
        lake.add_columns(self.table, SCHEMA)
        for attempt in range(2):
            self.table.update_incremental()
            try:
                if source.num_rows and lake.is_small(source.num_rows):
                    predicate = lake.in_list("video_id", source["video_id"].to_pylist())
                    lake.replace(self.table, source, predicate, cursors)
                elif source.num_rows:
                    lake.merge(self.table, source, ("video_id",), cursors)
                else:
                    lake.note(self.table, SCHEMA, cursors)
                self._committed(cursors)
                return
            except lake.CommitFailedError:
                if attempt:
                    raise self._conflict(["a concurrent commit"]) from None
                log.warning("state %s: a compaction landed during the commit; merging again", self.location)

    def _committed(self, cursors: dict[str, str]) -> None:
        """This store now stands at its own commit: a later commit through it is not a conflict."""
        self.table.update_incremental()
        self.version = self.table.version()
        self.text_cursor = cursors.get("text_cursor", self.text_cursor)

    def _conflict(self, operations: list[str]) -> ConcurrentWriteError:
        return ConcurrentWriteError(
            f"{self.location}: another run committed state for this strategy while this one ran "
            f"({', '.join(operations)}); this run's manifest rows are published, its state is not. "
            "Rerun the day: it converges"
        )


def read_marks(table: DeltaTable) -> dict[str, object]:
    """What the newest commit carrying them recorded: text_cursor, newest_run_date, text_due."""
    marks = lake.commit_metadata(table, ("text_cursor", "newest_run_date", "text_due"))
    return {**marks, "text_due": json.loads(marks["text_due"]) if marks["text_due"] else {}}


def reopen(
    client,
    bucket: str,
    layout: Layout,
    strategy: str,
    patience_s: float,
    version: int | None,
    marks: tuple[str | None, str | None, dict[str, int]],
) -> StateStore:
    """The store as a plan read it (`version`, None: no table then; `marks`: that version's text cursor,
    newest run date and due list, so nothing is read of the table's history here), for that plan's
    commit, which checks `contested` and `load_marks` again under the lease."""
    options = lake.storage_options(client, patience_s)
    location = lake.uri(bucket, layout.state_table_key(strategy))
    table = lake.open_table(location, options) if version is not None else None
    text_cursor, newest_run_date, text_due = marks
    return StateStore(
        location,
        options,
        table,
        "state table",
        version=version,
        text_cursor=text_cursor,
        newest_run_date=newest_run_date,
        text_due=text_due,
    )


def open_store(
    client, bucket: str, layout: Layout, strategy: str, state_dir: Path, patience_s: float
) -> StateStore:
    """The strategy's state table, importing a seed-era SQLite state file the first time (the file then
    moves to its `.imported` name: `legacy.retire`)."""
    options = lake.storage_options(client, patience_s)
    location = lake.uri(bucket, layout.state_table_key(strategy))
    table = lake.open_table(location, options)
    source = "state table"
    if table is None:
        from clipfarm_fusion.legacy import seed_state  # only when there is no table yet

        legacy, where = seed_state.rows_to_import(client, bucket, layout, strategy, state_dir)
        if legacy is None:
            return StateStore(location, options, None, "new state table")
        from clipfarm_fusion.legacy import retire

        log.info("importing %d state rows from %s into %s (once)", legacy.num_rows, where, location)
        table = lake.import_rows(location, legacy, options, where)
        source = (
            f"imported {legacy.num_rows} rows from {where} (moved to {retire.retire(client, bucket, where)})"
        )
    lake.add_columns(table, SCHEMA)
    store = StateStore(location, options, table, source, version=table.version())
    store.text_cursor = store.load_marks()["text_cursor"]
    return store


def read_rows(
    client, bucket: str, layout: Layout, strategy: str, columns: Sequence[str] = STATE_COLUMNS
) -> pd.DataFrame:
    """Every published state row (the table, or a seed-era mirror not imported yet), sorted by video_id:
    the state columns, or `columns` of the table's (`run_id` says which run wrote a row; null for rows
    the seed era wrote)."""
    table = lake.open_table(lake.uri(bucket, layout.state_table_key(strategy)), lake.storage_options(client))
    if table is not None:
        wanted = pa.schema([SCHEMA.field(column) for column in columns])
        frame = to_frame(lake.conform(lake.read_all(table), wanted))
    else:
        from clipfarm_fusion.legacy import seed_state  # only when there is no table yet

        mirrored = seed_state.read_mirror(client, bucket, layout, strategy)
        frame = empty_frame() if mirrored is None else mirrored
    return frame.reset_index().reindex(columns=list(columns)).sort_values("video_id", ignore_index=True)


def row_cursors(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """`captured_ns` and `hash64` of horizon rows: what the state keeps of the row it processed."""
    return latest.instants(rows["captured_ts"]), metadata.hash64_of_hex(rows["source_hash"])


def refreshed_rows(horizon: pd.DataFrame, prior: pd.DataFrame, delta: pd.DataFrame) -> list[dict]:
    """State rows of candidates that need no work but whose horizon row is not the one the state
    remembers (a newer capture of the same URL, or a row imported from a seed-era state without the
    cursor columns): the same row with the cursor columns of the current horizon row, so the next scan
    drops the video unhashed."""
    rows = horizon[horizon["video_id"].isin(prior.index) & ~horizon["video_id"].isin(delta["video_id"])]
    if rows.empty:
        return []
    captured_ns, hashes = row_cursors(rows)
    old = prior.loc[rows["video_id"]]
    stale = (old["captured_ns"].to_numpy(dtype="float64", na_value=np.nan) != captured_ns) | (
        old["hash64"].to_numpy(dtype="float64", na_value=np.nan) != hashes
    )
    stale |= old["captured_ns"].isna().to_numpy() | old["hash64"].isna().to_numpy()
    refreshed = old[stale].reset_index()
    refreshed["captured_ns"] = captured_ns[stale]
    refreshed["hash64"] = hashes[stale]
    return [
        {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in row.items()}
        for row in refreshed[list(SCHEMA.names)].to_dict("records")
    ]


def _same(old: object, new: object) -> bool:
    """A stored value equals a new one; missing equals only missing."""
    if new is None or pd.isna(old):
        return new is None and pd.isna(old)
    return bool(old == new)


def changed_rows(rows: list[dict], prior: pd.DataFrame) -> list[dict]:
    """The `rows` that differ from what the table already holds (`prior`, indexed by video_id;
    processed_at aside), so a rerun with nothing new writes nothing."""
    fields = ("source_hash", "status", "error", "artifact_key", "retry_count", *CURSOR_COLUMNS)
    changed = []
    for row in rows:
        if row["video_id"] in prior.index:
            old = prior.loc[row["video_id"]]
            if all(_same(old[f], row[f]) for f in fields):
                continue
        changed.append(row)
    return changed
