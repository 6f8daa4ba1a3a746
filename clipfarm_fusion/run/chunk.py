"""The fuse stage: one chunk of a plan. It fetches, gates and fuses the chunk's videos batch by batch,
writes their shards, and stages its manifest and state rows for the commit (one object); it returns
only that object's key and its counts.

A chunk depends only on the plan and the bucket, so any process can fuse it and a retry fuses it again
(the retry's staged object replaces the first attempt's; shards an attempt wrote but nobody references
are orphans that `clipfarm-fusion gc` sweeps). Memory is one batch (`shard_size` videos) plus the
chunk's rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.core import drift, policy, worklist
from clipfarm_fusion.core.kernels import FusionOptions, fuse
from clipfarm_fusion.core.layout import MODALITIES, Layout
from clipfarm_fusion.run import fetch, fusion_options, staging
from clipfarm_fusion.run.plan import Plan, StrategyPlan
from clipfarm_fusion.run.summary import StrategySummary
from clipfarm_fusion.stores import manifest, s3io, state, state_schema
from clipfarm_fusion.stores.schema_lock import SchemaLock
from clipfarm_fusion.stores.shards import ShardWriter

ProgressCallback = Callable[[int], None]  # videos looked at so far in this chunk


@dataclass(frozen=True)
class ChunkResult:
    """What a fuse step hands the commit: where its rows are staged, and how far it got."""

    index: int
    key: str
    looked_at: int
    reads: int


@dataclass
class _Strategy:
    """One strategy's share of a chunk."""

    plan: StrategyPlan
    reasons: np.ndarray  # per row of the chunk: its delta reason, None when not in this strategy's delta
    retry_base: np.ndarray
    prior: pd.DataFrame
    options: FusionOptions
    writer: ShardWriter
    dims: tuple[int, int, int] | None
    summary: StrategySummary = field(default_factory=StrategySummary)
    fresh: list[drift.Counts] = field(default_factory=list)  # drift evidence (with a lock)
    manifest_rows: list[pa.Table] = field(default_factory=list)
    state_rows: list[dict] = field(default_factory=list)
    looked_at: int = 0
    text_checked: list[str] = field(default_factory=list)  # placeholders rechecked for their text
    text_late: list[str] = field(default_factory=list)  # ... on the text stage's news, and still without

    @property
    def name(self) -> str:
        return self.plan.name


@dataclass
class _Outcome:
    """One strategy's verdict on a batch, before anything is written."""

    index: np.ndarray
    statuses: np.ndarray
    errors: dict[int, str]
    fused_index: np.ndarray
    vectors: np.ndarray | None
    upgrade_checked: int


def fuse_chunk(
    config: FusionConfig,
    plan: Plan,
    index: int,
    client=None,
    log: logging.Logger | None = None,
    on_progress: ProgressCallback | None = None,
) -> ChunkResult:
    """Fuse chunk `index` of `plan` and stage its rows; see the module docstring."""
    log = log or logging.getLogger("clipfarm_fusion")
    client = client or s3io.make_client(config.fetch_threads)
    layout = Layout(config.root)
    tables, _ = staging.get(
        client, config.bucket, layout.chunk_input_key(plan.run_id, index), config.s3_patience_seconds
    )
    work = tables["work"].to_pandas()
    options = fusion_options.load(client, config, plan.names)
    strategies = [
        _open(client, config, layout, plan, index, s, work, tables, options) for s in plan.strategies
    ]
    budget = config.max_items  # the plan makes one chunk of the day when there is a cap
    looked_at = reads = 0
    for start in range(0, len(work), config.shard_size):
        if budget == 0:
            break
        rows = work.iloc[start : start + config.shard_size]
        batch = fetch.fetch_batch(
            client,
            config,
            layout,
            rows,
            [s.reasons[start : start + len(rows)] for s in strategies],
            plan.text_problem,
            plan.keys_per_item,
            budget,
        )
        if budget is not None:
            budget -= batch.reads
        reads += batch.reads
        for strategy in strategies:
            reasons = strategy.reasons[start : start + len(batch.rows)]
            outcome = _judge(config, strategy, batch, reasons)
            _publish(config, layout, strategy, batch, outcome, reasons, start, plan.text_problem)
            _note_rechecks(strategy, batch, reasons)
            strategy.looked_at += int(np.count_nonzero(pd.notna(reasons)))
        looked_at += len(batch.rows)
        if on_progress:
            on_progress(looked_at)
    key = layout.chunk_output_key(plan.run_id, index)
    _stage(client, config, key, strategies)
    log.info("chunk %d: looked at %d videos, read %d", index, looked_at, reads)
    return ChunkResult(index=index, key=key, looked_at=looked_at, reads=reads)


def _open(
    client,
    config: FusionConfig,
    layout: Layout,
    plan: Plan,
    index: int,
    strategy: StrategyPlan,
    work: pd.DataFrame,
    tables: dict[str, pa.Table],
    options: FusionOptions,
) -> _Strategy:
    prior = state_schema.to_frame(tables[f"prior/{strategy.name}"])
    per_chunk = math.ceil(
        plan.chunk_size / config.shard_size
    )  # each chunk numbers its shards in its own range
    writer = ShardWriter(
        client,
        config.bucket,
        layout,
        strategy.name,
        date.fromisoformat(plan.run_date),
        first_part=strategy.first_part + index * per_chunk,
        run_id=plan.run_id,
    )
    return _Strategy(
        plan=strategy,
        reasons=work[f"reason/{strategy.name}"].to_numpy(dtype=object),
        retry_base=work[f"retry_base/{strategy.name}"].fillna(0).to_numpy(dtype=np.int64),
        prior=prior,
        options=options,
        writer=writer,
        dims=strategy.dims,
    )


def _dims(batch: fetch.Batch, modality: str, index: np.ndarray) -> np.ndarray:
    return np.array(
        [0 if batch.vectors[modality][i] is None else batch.vectors[modality][i].shape[0] for i in index],
        dtype=np.int64,
    )


def _judge(config: FusionConfig, strategy: _Strategy, batch: fetch.Batch, reasons: np.ndarray) -> _Outcome:
    """Statuses, failures and fused vectors of one strategy for a batch. With a lock, the fresh items'
    dims are counted for the commit's drift verdict; without one, the first batch with anything to fuse
    sets the chunk's dims (its majority), as a one-process run always did."""
    is_active = fetch.active(reasons, batch.present["text"])
    upgrade_checked = int(np.count_nonzero((reasons == worklist.UPGRADE_CHECK) & ~is_active))
    index = np.flatnonzero(is_active)
    statuses = batch.statuses[index].copy()
    candidates = index[np.isin(statuses, policy.FUSED_STATUSES)]
    observed = {
        name: _dims(batch, modality, candidates)
        for name, modality in zip(drift.DIM_FIELDS, MODALITIES, strict=True)
    }
    if strategy.plan.locked:
        fresh = np.isin(reasons[candidates].astype(object), [worklist.NEW, worklist.HASH_CHANGED])
        strategy.fresh.append(drift.count({name: dims[fresh] for name, dims in observed.items()}))
    elif strategy.dims is None and candidates.size:  # the first batch that has any sets the dims
        counts = drift.count(observed)
        majority = [drift.majority(counts[name]) for name in drift.DIM_FIELDS]
        if majority[0] and majority[1]:
            strategy.dims = (majority[0], majority[1], majority[2] or config.text_dim)
    errors = {int(i): batch.errors[int(i)] for i in candidates if int(i) in batch.errors}
    if strategy.dims is not None:
        source = "schema.json" if strategy.plan.locked else "this run's majority"
        for name, modality, expected in zip(drift.DIM_FIELDS, MODALITIES, strategy.dims, strict=True):
            for i, found in zip(candidates, observed[name], strict=True):
                if found and found != expected and int(i) not in errors:
                    errors[int(i)] = f"{modality} embedding: {found}-d, expected {expected}-d ({source})"
    fused_index = np.array([i for i in candidates if int(i) not in errors], dtype=np.int64)
    vectors = None
    if fused_index.size:
        dv, da, dt = strategy.dims
        text_present = batch.present["text"][fused_index]
        zeros = np.zeros(dt, dtype=np.float32)
        vectors = fuse(
            strategy.name,
            np.stack([batch.vectors["video"][i] for i in fused_index]),
            np.stack([batch.vectors["audio"][i] for i in fused_index]),
            np.stack(
                [
                    batch.vectors["text"][i] if present else zeros
                    for i, present in zip(fused_index, text_present, strict=True)
                ]
            ),
            text_present,
            strategy.options,
        )
    return _Outcome(index, statuses, errors, fused_index, vectors, upgrade_checked)


def _publish(
    config: FusionConfig,
    layout: Layout,
    strategy: _Strategy,
    batch: fetch.Batch,
    outcome: _Outcome,
    reasons: np.ndarray,
    start: int,
    text_problem: str | None,
) -> None:
    """Write the batch's shard now; keep its manifest and state rows for the chunk's staged object."""
    rows = batch.rows
    now = datetime.now(UTC).isoformat(timespec="seconds")
    retry_base = strategy.retry_base[start : start + len(rows)]
    statuses = outcome.statuses
    failed = np.array([int(i) in outcome.errors for i in outcome.index], dtype=bool)
    retries = np.array([], dtype=np.int64)
    if failed.any():
        retries, fail_statuses = policy.after_failure(
            retry_base[outcome.index[failed]], config.max_fail_retries
        )
        statuses[failed] = fail_statuses
    retry_by_index = dict(zip(outcome.index[failed].tolist(), retries.tolist(), strict=True))

    pointer: dict[int, tuple[str, int]] = {}
    if outcome.vectors is not None:
        fused = outcome.fused_index
        key = strategy.writer.write(
            rows["video_id"].to_numpy()[fused].tolist(),
            outcome.vectors,
            rows["captured_at"].to_numpy()[fused].tolist(),
        )
        pointer = {int(i): (key, n) for n, i in enumerate(fused)}
        strategy.summary.fused_dim = int(outcome.vectors.shape[1])
        strategy.manifest_rows.append(
            manifest.shard_rows(
                strategy.name,
                layout,
                rows.iloc[fused],
                batch.present["text"][fused],
                batch.text_status[fused],
                outcome.vectors.shape[1],
                key,
                retry_base[fused],
                strategy.options,
                _lineage(strategy, batch, fused),
            )
        )
        strategy.summary.shards_written.append(key)

    ids = rows["video_id"].tolist()
    captured_ns, hashes = state.row_cursors(rows)
    errors_by_id: dict[str, str] = {}  # failures, and why skipped items wait: shown for the samples
    for position, i in enumerate(outcome.index.tolist()):
        status = str(statuses[position])
        error = outcome.errors.get(i) or fetch.skip_reason(status, batch, i, text_problem)
        if error:
            errors_by_id[ids[i]] = error
        artifact, vector_id = (
            (pointer[i][0], f"{pointer[i][0]}#{pointer[i][1]}") if i in pointer else (None, None)
        )
        strategy.state_rows.append(
            {
                "video_id": ids[i],
                "source_hash": rows.at[i, "source_hash"],
                "processed_at": now,
                "status": status,
                "error": error,
                "artifact_key": artifact,
                "vector_id": vector_id,
                "retry_count": int(retry_by_index.get(i, retry_base[i])),
                "captured_ns": int(captured_ns[i]),
                "hash64": int(hashes[i]),
            }
        )
    strategy.summary.upgrade_checked += outcome.upgrade_checked
    strategy.summary.record(
        [str(s) for s in statuses], [ids[i] for i in outcome.index], errors_by_id, config.sample_size
    )


def _lineage(strategy: _Strategy, batch: fetch.Batch, fused: np.ndarray) -> manifest.Lineage:
    """What the fused rows were made from: each input as read, and the lock these dims and options make."""
    return manifest.Lineage(
        {m: batch.etags[m][fused] for m in MODALITIES},
        {m: batch.version_ids[m][fused] for m in MODALITIES},
        SchemaLock.build(strategy.name, strategy.dims, strategy.options).lock_id,
    )


def _note_rechecks(strategy: _Strategy, batch: fetch.Batch, reasons: np.ndarray) -> None:
    """Which placeholders this batch rechecked, and which of those still have no text file although the
    text stage had news of them (see `text_due`; with no such signal every placeholder is rechecked
    anyway, so none is noted late)."""
    rechecked = np.asarray(reasons == worklist.UPGRADE_CHECK, dtype=bool)
    ids = batch.rows["video_id"].to_numpy(dtype=object)
    strategy.text_checked += ids[rechecked].tolist()
    if not strategy.plan.recheck_all:
        strategy.text_late += ids[rechecked & ~batch.present["text"][: len(ids)]].tolist()


def _stage(client, config: FusionConfig, key: str, strategies: list[_Strategy]) -> None:
    """One object for the commit: per strategy its changed state rows, its manifest rows, and in the
    JSON its summary, the dims it fused with and the dims it saw."""
    tables: dict[str, pa.Table] = {}
    meta: dict[str, dict] = {}
    for strategy in strategies:
        name = strategy.name
        changed = state.changed_rows(strategy.state_rows, strategy.prior)
        tables[f"state/{name}"] = pa.Table.from_pylist(changed, schema=state_schema.SCHEMA)
        schema = manifest.schema_for(name)
        tables[f"manifest/{name}"] = (
            pa.concat_tables(strategy.manifest_rows) if strategy.manifest_rows else schema.empty_table()
        )
        meta[name] = {
            "summary": asdict(strategy.summary),
            "dims": list(strategy.dims) if strategy.dims else None,
            "fresh": drift.merge(strategy.fresh),
            "looked_at": strategy.looked_at,
            "text_checked": strategy.text_checked,
            "text_late": strategy.text_late,
        }
    staging.put(client, config.bucket, key, tables, meta, config.s3_patience_seconds)


def run_all(
    config: FusionConfig,
    plan: Plan,
    client,
    log: logging.Logger,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[ChunkResult]:
    """Every chunk of `plan` in this process, in order (the CLI's one worker, and the tests)."""
    results: list[ChunkResult] = []
    done = 0
    started = time.monotonic()
    for index in range(plan.chunks):

        def progress(looked: int, before: int = done) -> None:
            elapsed = time.monotonic() - started
            log.info(
                "looked at %d/%d videos (%.0f/s)",
                before + looked,
                plan.work,
                (before + looked) / elapsed if elapsed else 0.0,
            )
            if on_progress:
                on_progress(before + looked, plan.work)

        result = fuse_chunk(config, plan, index, client, log, progress)
        results.append(result)
        done += result.looked_at
    return results
