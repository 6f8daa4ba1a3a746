"""The fused manifest: a Delta table (`<root>/fused/<s>/manifest/`), one row per `(video_id, source_hash)`.

The newest committed fusion of a key wins, by commit order: a commit holds the strategy's commit lease
(`lease`), so commits of one strategy never interleave, and every row it writes replaces the row of the
same key. Each row records `fused_at`, the instant of the commit that wrote it (never earlier than the
`fused_at` it replaces, whatever the clocks of the machines), so readers choosing among a video's rows
order them by capture and then by commit, never by the date in a key or by part numbers compared as
text. The rows already published for the run's videos are read with a streaming scan, and the keys are
replaced in one commit (`lake.replace` for a small day, `lake.merge` for a large one). The table has
the manifest's columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from clipfarm_fusion.core import latest
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.core.policy import SUCCESS_FULL, SUCCESS_PLACEHOLDER
from clipfarm_fusion.errors import ConcurrentWriteError
from clipfarm_fusion.stores import lake

if TYPE_CHECKING:
    from clipfarm_fusion.core.kernels import FusionOptions

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 8
KEY_COLUMNS = ("video_id", "source_hash")

_FUSED = pa.schema(
    [
        ("video_id", pa.string()),
        ("captured_at", pa.string()),
        ("source_hash", pa.string()),
        ("fusion_strategy", pa.string()),
        ("fused_dim", pa.int32()),
        ("fused_key", pa.string()),
        ("shard_idx", pa.int32()),
        ("shard_n", pa.int32()),
        ("video_emb_key", pa.string()),
        ("audio_emb_key", pa.string()),
        ("text_emb_key", pa.string()),
        ("text_present", pa.int8()),
        ("text_source", pa.string()),
        ("text_state_status", pa.string()),
        ("text_missing_reason", pa.string()),
        ("fusion_status", pa.string()),
        ("retry_count_at_write", pa.int32()),
        ("fused_at", pa.string()),
    ]
)
# Lineage: which version of each input the vector was made from (the ETag the GET returned, and the
# VersionId in a versioned bucket; null where the object was not read) and the lock it was fused under
# (`SchemaLock.lock_id`). Recorded from the answers the fetch already has: no request of its own. Last,
# so a table an older version created gains them at its end (`lake.add_columns`).
LINEAGE = pa.schema(
    [(f"{m}_etag", pa.string()) for m in ("video", "audio", "text")]
    + [(f"{m}_version_id", pa.string()) for m in ("video", "audio", "text")]
    + [("lock_id", pa.string())]
)
SCHEMA = pa.schema([*_FUSED, *LINEAGE])
# Strategy `projection` adds one column (docs/contract.md), the artifact's sha256 on every row, before
# the lineage: where tables it created before lineage existed hold it.
PROJECTION_SCHEMA = pa.schema([*_FUSED, pa.field("projection_id", pa.string()), *LINEAGE])


def shard_rows(
    strategy: str,
    layout: Layout,
    rows: pd.DataFrame,
    text_present: np.ndarray,
    text_status: np.ndarray,
    fused_dim: int,
    key: str,
    retry_base: np.ndarray,
    options: FusionOptions,
    lineage: Lineage,
) -> pa.Table:
    """Manifest rows (the manifest columns (docs/contract.md)) for the horizon `rows` fused into shard `key`, in shard order."""
    ids = rows["video_id"].tolist()
    table = pa.table(
        {
            "video_id": ids,
            "captured_at": rows["captured_at"].tolist(),
            "source_hash": rows["source_hash"].tolist(),
            "fusion_strategy": [strategy] * len(ids),
            "fused_dim": np.full(len(ids), fused_dim, dtype=np.int32),
            "fused_key": [key] * len(ids),
            "shard_idx": np.arange(len(ids), dtype=np.int32),
            "shard_n": np.full(len(ids), len(ids), dtype=np.int32),
            "video_emb_key": [layout.embedding_key("video", v) for v in ids],
            "audio_emb_key": [layout.embedding_key("audio", v) for v in ids],
            "text_emb_key": [layout.embedding_key("text", v) for v in ids],
            "text_present": text_present.astype(np.int8),
            "text_source": np.where(text_present, "full", "placeholder").tolist(),
            "text_state_status": ["" if s is None else s for s in text_status],
            "text_missing_reason": [
                "" if p else f"terminal_text_status:{s}"
                for p, s in zip(text_present, text_status, strict=True)
            ],
            "fusion_status": np.where(text_present, SUCCESS_FULL, SUCCESS_PLACEHOLDER).tolist(),
            "retry_count_at_write": retry_base.astype(np.int32),
            "fused_at": pa.nulls(len(ids), pa.string()),  # the commit stamps it (`stamped`)
            **{f"{m}_etag": pa.array(lineage.etags[m], pa.string()) for m in ("video", "audio", "text")},
            **{
                f"{m}_version_id": pa.array(lineage.version_ids[m], pa.string())
                for m in ("video", "audio", "text")
            },
            "lock_id": [lineage.lock_id] * len(ids),
        },
        schema=SCHEMA,
    )
    if strategy == "projection":
        projection_id = pa.array([options.projection.projection_id] * len(ids))
        table = table.add_column(len(_FUSED), "projection_id", projection_id)
    return table


@dataclass(frozen=True)
class Lineage:
    """What the rows of one shard were made from: per modality the ETags and VersionIds of the objects
    as read (one per row), and the lock they were fused under."""

    etags: dict[str, np.ndarray]
    version_ids: dict[str, np.ndarray]
    lock_id: str


def schema_for(strategy: str) -> pa.Schema:
    return PROJECTION_SCHEMA if strategy == "projection" else SCHEMA


def _keys(table: pa.Table) -> pa.ChunkedArray:
    """`video_id|source_hash` per row: unambiguous, since a source_hash is 64 hex digits."""
    return pc.binary_join_element_wise(table["video_id"], table["source_hash"], "|")


COMPARED = ("video_id", "source_hash", "fused_at")  # what a commit reads of the published rows


def fused_at(published: pa.Table, now: datetime | None = None) -> str:
    """The `fused_at` of a commit: now (UTC, microseconds), or just after the latest `fused_at` among the
    rows it replaces when a machine's clock is behind, so the newer fusion is always the later one."""
    instant = now or datetime.now(UTC)
    stamps = latest.instants(published["fused_at"]) if published.num_rows else np.zeros(0, np.int64)
    if stamps.size and stamps.max() != latest.OLDEST:
        previous = pd.Timestamp(int(stamps.max()), tz="UTC").to_pydatetime() + timedelta(microseconds=1)
        instant = max(instant, previous)
    return instant.isoformat(timespec="microseconds")


def stamped(new: pa.Table, published: pa.Table, now: datetime | None = None) -> tuple[pa.Table, int, int]:
    """(`new` with this commit's `fused_at`, rows added, rows updated): every row of `new` (one per key)
    is written, since the commit is the newest fusion of its keys; `published` holds the published rows
    of the same videos (the `COMPARED` columns)."""
    existing = pc.is_in(_keys(new), value_set=_keys(published).combine_chunks()).to_numpy(
        zero_copy_only=False
    )
    stamp = pa.array([fused_at(published, now)] * new.num_rows, pa.string())
    rows = new.set_column(new.schema.get_field_index("fused_at"), "fused_at", stamp)
    updated = int(existing.sum())
    return rows, new.num_rows - updated, updated


def encode(table: pa.Table) -> bytes:
    """Parquet bytes of a manifest snapshot (one chunk per column: faster to write and to read)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.combine_chunks(), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


@dataclass
class ManifestTable:
    """One strategy's manifest table as a run opened it (None until the first commit creates it)."""

    location: str
    options: dict[str, str]
    strategy: str
    table: DeltaTable | None
    source: str

    def commit(self, new: pa.Table) -> tuple[int, int]:
        """Upsert the run's rows (one per key): (rows added, rows updated). The caller holds the
        strategy's commit lease. The published rows of the same videos are read (a streaming scan of
        three narrow columns), and the run's rows, stamped with the commit's `fused_at`, replace exactly
        their keys in one commit (a replaceWhere for a small day, a MERGE on the key for a large one:
        `lake.is_small`). A compaction landing meanwhile is merged with: the upsert is redone on the
        fresh table."""
        new = lake.conform(new, schema_for(self.strategy))
        if not new.num_rows:
            return 0, 0
        ids = pc.unique(new["video_id"].combine_chunks())
        compared = pa.schema([SCHEMA.field(name) for name in COMPARED])
        for attempt in range(COMMIT_ATTEMPTS):
            if self.table is None:
                self.table, _ = lake.create(self.location, schema_for(self.strategy), self.options)
            lake.add_columns(self.table, schema_for(self.strategy))
            published = lake.select_ids(self.table, "video_id", ids, compared)
            rows, added, updated = stamped(new, published)
            try:
                if lake.is_small(rows.num_rows):
                    lake.replace(self.table, *self._replacing(rows, published), {})
                else:
                    lake.merge(self.table, rows, KEY_COLUMNS, {})
                return added, updated
            except lake.CommitFailedError:
                log.warning(
                    "manifest %s changed under us (attempt %d); merging again", self.location, attempt + 1
                )
                self.table.update_incremental()
        raise ConcurrentWriteError(
            f"{self.location}: lost the race {COMMIT_ATTEMPTS} times to other writers; rerun later"
        )

    def _replacing(self, rows: pa.Table, published: pa.Table) -> tuple[pa.Table, str]:
        """`rows` and a predicate that matches exactly their keys among the published rows. The predicate
        is `video_id IN (...) AND source_hash IN (...)` (delta-rs checks concurrent commits against plain
        comparisons, not against expressions); a published row it also matches (same video, another
        hash that one of the written rows has) is written back unchanged, so nothing else is lost."""
        predicate = (
            f"{lake.in_list('video_id', pc.unique(rows['video_id']).to_pylist())} AND "
            f"{lake.in_list('source_hash', pc.unique(rows['source_hash']).to_pylist())}"
        )
        caught = pc.and_(
            pc.and_(
                pc.is_in(published["video_id"], value_set=rows["video_id"].combine_chunks()),
                pc.is_in(published["source_hash"], value_set=rows["source_hash"].combine_chunks()),
            ),
            pc.invert(pc.is_in(_keys(published), value_set=_keys(rows).combine_chunks())),
        )
        keep = _keys(published.filter(caught)).combine_chunks()
        if len(keep):
            ids = pc.unique(published.filter(caught)["video_id"].combine_chunks())
            full = lake.select_ids(self.table, "video_id", ids, schema_for(self.strategy))
            rows = pa.concat_tables([rows, full.filter(pc.is_in(_keys(full), value_set=keep))])
        return rows, predicate


def open_table(
    client, bucket: str, layout: Layout, strategy: str, patience_s: float, *, import_seed_era: bool = True
) -> ManifestTable:
    """The strategy's manifest table; the first run that finds none imports a seed-era
    `fused_manifest.parquet` into it once (StoreError, before anything is written, if that file is not
    a manifest). The file then moves to its `.imported` name (`legacy.retire`): never imported again,
    and never read stale at its old path. A commit opens the table its plan already imported
    (`import_seed_era=False`)."""
    options = lake.storage_options(client, patience_s)
    location = lake.uri(bucket, layout.manifest_table_key(strategy))
    table = lake.open_table(location, options)
    if table is not None:
        return ManifestTable(location, options, strategy, table, f"manifest table version {table.version()}")
    if not import_seed_era:
        return ManifestTable(location, options, strategy, None, "new manifest table")
    from clipfarm_fusion.legacy import retire, seed_manifest  # only when there is no table yet

    seed_era, where = seed_manifest.read(client, bucket, layout, strategy)
    if seed_era is None:
        return ManifestTable(location, options, strategy, None, "new manifest table")
    legacy = lake.conform(seed_era, schema_for(strategy))
    log.info("importing %d manifest rows from %s into %s (once)", legacy.num_rows, where, location)
    table = lake.import_rows(location, legacy, options, where)
    moved = retire.retire(client, bucket, where)
    return ManifestTable(
        location, options, strategy, table, f"imported {legacy.num_rows} rows from {where} (moved to {moved})"
    )


def read(client, bucket: str, layout: Layout, strategy: str) -> pa.Table | None:
    """The published manifest with `schema_for(strategy)`'s columns: the table, or a seed-era file not
    imported yet, read in place; None when nothing has been published."""
    table = lake.open_table(
        lake.uri(bucket, layout.manifest_table_key(strategy)), lake.storage_options(client)
    )
    if table is not None:
        return lake.conform(lake.read_all(table), schema_for(strategy))
    from clipfarm_fusion.legacy import seed_manifest  # only when there is no table yet

    seed_era, _ = seed_manifest.read(client, bucket, layout, strategy)
    return None if seed_era is None else lake.conform(seed_era, schema_for(strategy))
