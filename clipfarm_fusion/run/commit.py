"""The commit stage: the single writer of a run. It gathers the chunks' staged rows, draws the verdicts
that need the whole day (drift against the lock, or the dims to lock), and publishes per strategy the
schema lock, then the manifest, then the state (each step only once the one before it is durable), and
last removes the run's staged objects.

A strategy that must stop (drift) stops alone: the shards its chunks wrote are withdrawn (nothing
references them yet) and the others publish. On a strategy's first run the chunks each fused with the
majority dims of what they saw; a chunk that disagrees with the day's majority publishes nothing for that
strategy, its shards are withdrawn and its videos stay in the delta for the next run (counted as
deferred), which compares them with the lock this run writes.

A strategy commits under its commit lease (`lease`): it first asks the state which of its videos
another run committed after this run's plan (`StateStore.contested`). If any, that strategy publishes
nothing (its shards are withdrawn) and is named in `summary.conflicts` (exit 4), and the other strategies
go on; runs whose videos are disjoint (two different days) both commit.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, fields

import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.core import drift, policy, text_due
from clipfarm_fusion.core.layout import MODALITIES, Layout
from clipfarm_fusion.errors import ConcurrentWriteError, SchemaDriftError
from clipfarm_fusion.run import fusion_options, staging
from clipfarm_fusion.run.plan import Plan, StrategyPlan
from clipfarm_fusion.run.summary import RunSummary, StrategySummary
from clipfarm_fusion.stores import lake, lease, manifest, s3io, schema_lock, state, state_schema
from clipfarm_fusion.stores.schema_lock import SchemaLock

log = logging.getLogger(__name__)


def commit(
    config: FusionConfig, plan: Plan, results: list, client=None, log: logging.Logger = log
) -> RunSummary:
    """Publish the chunks of `plan` (`results`: the fuse steps' ChunkResults, any order)."""
    client = client or s3io.make_client(config.fetch_threads)
    layout = Layout(config.root)
    summary = _summary(plan.summary)
    staged = [
        staging.get(client, config.bucket, result.key, config.s3_patience_seconds)
        for result in sorted(results, key=lambda r: r.index)
    ]
    if len(staged) != plan.chunks:
        raise ValueError(f"commit of run {plan.run_id} got {len(staged)} of its {plan.chunks} chunks")
    plan_tables: dict[str, pa.Table] = {}
    if plan.refreshing:
        plan_tables, _ = staging.get(
            client, config.bucket, layout.plan_key(plan.run_id), config.s3_patience_seconds
        )
    keys = [layout.plan_key(plan.run_id)] if plan.refreshing else []
    keys += [layout.chunk_input_key(plan.run_id, i) for i in range(plan.chunks)]
    keys += [result.key for result in results]
    for strategy in plan.strategies:
        strategy_summary = summary.strategies[strategy.name]
        try:
            _commit_strategy(client, config, layout, plan, strategy, strategy_summary, staged, plan_tables)
        except SchemaDriftError as exc:
            del summary.strategies[strategy.name]
            summary.stopped[strategy.name] = str(exc)
            log.error("%s stopped, nothing of it published: %s", strategy.name, exc)
            continue
        except ConcurrentWriteError as exc:
            del summary.strategies[strategy.name]
            summary.conflicts[strategy.name] = str(exc)
            log.error("%s yielded to a concurrent run: %s", strategy.name, exc)
            continue
        strategy_summary.seconds = round(time.time() - plan.started, 3)
    staging.remove(client, config.bucket, keys)
    summary.seconds = round(time.time() - plan.started, 3)
    return summary


def _summary(data: dict) -> RunSummary:
    strategies = {name: StrategySummary(**values) for name, values in data["strategies"].items()}
    others = {f.name: data[f.name] for f in fields(RunSummary) if f.name != "strategies"}
    return RunSummary(**others, strategies=strategies)


def _commit_strategy(
    client,
    config: FusionConfig,
    layout: Layout,
    plan: Plan,
    strategy: StrategyPlan,
    summary: StrategySummary,
    staged: list[tuple[dict[str, pa.Table], dict]],
    plan_tables: dict[str, pa.Table],
) -> None:
    name = strategy.name
    parts, dims = _agreeing_parts(client, config, strategy, summary, [(t, meta[name]) for t, meta in staged])
    looked_at = 0
    for _, meta in parts:
        summary.merge(StrategySummary(**meta["summary"]), config.sample_size)
        looked_at += meta["looked_at"]
    summary.deferred = strategy.delta - looked_at
    manifest_rows = [t[f"manifest/{name}"] for t, _ in parts if t[f"manifest/{name}"].num_rows]
    summary.fused_dim = strategy.fused_dim
    rows = [t[f"state/{name}"] for t, _ in parts]
    rows += [plan_tables[f"refreshed/{name}"]] if f"refreshed/{name}" in plan_tables else []
    changed = _written_by(
        plan.run_id,
        pa.concat_tables(
            [lake.conform(r, state_schema.SCHEMA) for r in rows] or [state_schema.SCHEMA.empty_table()]
        ),
    )
    store = state.reopen(
        client,
        config.bucket,
        layout,
        name,
        config.s3_patience_seconds,
        strategy.state_version,
        (strategy.text_cursor, strategy.newest_run_date, strategy.text_due),
    )
    marks = _marks(plan, strategy, store, parts)  # against the marks the plan read: nothing new to say?
    if not (changed.num_rows or manifest_rows or store.marks_move(marks)):
        return  # nothing to publish: no lease, no request
    with lease.held(client, config.bucket, layout.commit_lease_key(name), plan.run_id, name):
        contested = store.contested(pc.unique(changed["video_id"]))
        if contested:
            _withdraw(client, config.bucket, summary.shards_written)
            raise ConcurrentWriteError(
                f"{name}: {len(contested)} of this run's videos (e.g. {', '.join(sorted(contested)[:3])}) were "
                "committed by another run after this run planned; nothing of this strategy was published. "
                "Rerun the day: it plans again from what that run published"
            )
        store.load_marks()  # as of the commits that landed since the plan (contested read them)
        marks = _marks(plan, strategy, store, parts)
        held = _held_marks(plan, store)
        published = pa.concat_tables(manifest_rows) if manifest_rows else None
        slices = _slices(published, changed, COMMIT_SLICE)
        for number, (manifest_slice, state_slice) in enumerate(slices, start=1):
            last = number == len(slices)
            if manifest_slice is not None and manifest_slice.num_rows:
                _publish_manifest(client, config, layout, strategy, summary, dims, manifest_slice)
            if state_slice.num_rows or (last and store.marks_move(marks)):
                store.commit(state_slice, marks if last else held)
            if len(slices) > 1:
                log.info(
                    "%s: published slice %d of %d (%d videos)",
                    name,
                    number,
                    len(slices),
                    state_slice.num_rows,
                )
    log.info(
        "%s: %d shards, manifest +%d/~%d rows, %d state rows written",
        name,
        len(summary.shards_written),
        summary.manifest_added,
        summary.manifest_updated,
        changed.num_rows,
    )


def _agreeing_parts(
    client, config: FusionConfig, strategy: StrategyPlan, summary: StrategySummary, parts: list
) -> tuple[list, tuple[int, int, int] | None]:
    """The chunks' parts that agree on the modality dims, and those dims.

    Under a lock, any drift fails the strategy (its shards withdrawn): the lock is the contract. With
    no lock yet, the first chunk that saw dims sets the day's, and a chunk that fused with others has
    its items failed (`_refused`), as one pass fails every batch that disagrees with its first.
    """
    name = strategy.name
    if strategy.locked:
        try:
            drift.check(strategy.dims, drift.merge([m["fresh"] for _, m in parts]), summary.schema_key, name)
        except SchemaDriftError:
            _withdraw(client, config.bucket, [k for _, m in parts for k in m["summary"]["shards_written"]])
            raise
        return parts, strategy.dims
    dims = next((tuple(m["dims"]) for _, m in parts if m["dims"]), None)
    agreeing = [
        (tables, meta)
        if meta["dims"] is None or tuple(meta["dims"]) == dims
        else _refused(client, config, name, dims, tables, meta)
        for tables, meta in parts
    ]
    return agreeing, dims


def _publish_manifest(
    client,
    config: FusionConfig,
    layout: Layout,
    strategy: StrategyPlan,
    summary: StrategySummary,
    dims: tuple[int, int, int] | None,
    rows: pa.Table,
) -> None:
    """Upsert the manifest rows, writing the schema lock first when this run is the strategy's first:
    under the commit lease, so the lock and the rows it describes appear together."""
    if not strategy.locked:
        lock = schema_lock.write_if_absent(
            client,
            config.bucket,
            summary.schema_key,
            SchemaLock.build(strategy.name, dims, fusion_options.load(client, config, (strategy.name,))),
        )
        summary.fused_dim = lock.fused_dim
    table = manifest.open_table(
        client, config.bucket, layout, strategy.name, config.s3_patience_seconds, import_seed_era=False
    )
    added, updated = table.commit(rows)
    summary.manifest_added += added
    summary.manifest_updated += updated


COMMIT_SLICE = 1_000_000  # videos per publish (a manifest upsert, then a state upsert): bounds each MERGE


def _slices(
    manifest_rows: pa.Table | None, state_rows: pa.Table, size: int
) -> list[tuple[pa.Table | None, pa.Table]]:
    """The run's rows cut into slices of at most `size` videos by video_id range, manifest and state
    rows of the same videos together. Each slice is published manifest first, then state, so after a
    kill between slices the state says exactly which videos are done, and a rerun fuses only the rest;
    each upsert is idempotent. One slice (the whole run) for any day below `size` videos."""
    ids = pc.unique(
        pa.concat_arrays(
            [state_rows["video_id"].combine_chunks()]
            + ([manifest_rows["video_id"].combine_chunks()] if manifest_rows is not None else [])
        )
    )
    if len(ids) <= size:
        return [(manifest_rows, state_rows)]
    bounds = pc.sort_indices(ids)
    ordered = ids.take(bounds)
    starts = [ordered[i].as_py() for i in range(size, len(ordered), size)]
    edges = [None, *starts, None]
    return [
        (
            None if manifest_rows is None else manifest_rows.filter(_within(manifest_rows, low, high)),
            state_rows.filter(_within(state_rows, low, high)),
        )
        for low, high in zip(edges[:-1], edges[1:], strict=True)
    ]


def _within(rows: pa.Table, low: str | None, high: str | None) -> pa.Array:
    """Rows whose video_id is in [low, high) (None: unbounded)."""
    keep = pa.array([True] * rows.num_rows)
    if low is not None:
        keep = pc.and_(keep, pc.greater_equal(rows["video_id"], low))
    if high is not None:
        keep = pc.and_(keep, pc.less(rows["video_id"], high))
    return keep


def _held_marks(plan: Plan, store: state.StateStore) -> dict[str, str]:
    """The marks a slice before the last records: the run's id (its rows are its own) and the marks the
    table already holds, so a run killed between slices leaves the text cursor, the newest run date and
    the due list where they were, and its uncommitted videos are planned again as before."""
    held = {"run_id": plan.run_id, "text_due": json.dumps(store.text_due or {})}
    if store.newest_run_date:
        held["newest_run_date"] = store.newest_run_date
    if store.text_cursor is not None:
        held["text_cursor"] = store.text_cursor
    return held


def _written_by(run_id: str, rows: pa.Table) -> pa.Table:
    """The state rows with this run as their writer (see `state_schema.WRITER_COLUMN`)."""
    index = rows.schema.get_field_index(state_schema.WRITER_COLUMN)
    return rows.set_column(index, state_schema.WRITER_COLUMN, pa.array([run_id] * rows.num_rows, pa.string()))


def _refused(
    client,
    config: FusionConfig,
    name: str,
    dims: tuple[int, int, int],
    tables: dict[str, pa.Table],
    meta: dict,
) -> tuple[dict[str, pa.Table], dict]:
    """A chunk of a first run that fused with other dims than the day locks (a day of mixed upstream
    models): its fused items fail against the day's dims, as one pass fails every batch after the first
    that disagrees with it; its shards are withdrawn and its manifest rows dropped."""
    chunk_dims = tuple(meta["dims"])
    log.warning(
        "%s: a chunk fused with dims %s, the day locks %s: its fused items fail", name, chunk_dims, dims
    )
    _withdraw(client, config.bucket, meta["summary"]["shards_written"])
    modality, found, expected = next(
        (m, f, e) for m, f, e in zip(MODALITIES, chunk_dims, dims, strict=True) if f != e
    )
    error = f"{modality} embedding: {found}-d, expected {expected}-d (this run's majority)"
    rows = tables[f"state/{name}"].to_pandas()
    fused = rows["artifact_key"].notna().to_numpy()
    retries, statuses = policy.after_failure(
        rows.loc[fused, "retry_count"].to_numpy(), config.max_fail_retries
    )
    was = rows.loc[fused, "status"].tolist()
    rows.loc[fused, ["status", "error", "artifact_key", "vector_id"]] = [
        [s, error, None, None] for s in statuses
    ]
    rows.loc[fused, "retry_count"] = retries
    summary = StrategySummary(**meta["summary"])
    moved = set(rows.loc[fused, "video_id"])
    for status, count in Counter(was).items():
        summary.counts[status] -= count
    summary.samples = {status: [v for v in ids if v not in moved] for status, ids in summary.samples.items()}
    summary.record(
        list(statuses), rows.loc[fused, "video_id"].tolist(), dict.fromkeys(moved, error), config.sample_size
    )
    summary.counts = {status: count for status, count in summary.counts.items() if count}
    summary.shards_written, summary.fused_dim = [], None
    refused = {
        **tables,
        f"state/{name}": pa.Table.from_pandas(rows, schema=state_schema.SCHEMA, preserve_index=False),
        f"manifest/{name}": tables[f"manifest/{name}"].slice(0, 0),
    }
    return refused, {**meta, "summary": asdict(summary), "dims": None}


def _marks(plan: Plan, strategy: StrategyPlan, store: state.StateStore, parts: list) -> dict[str, str]:
    """The commit metadata this strategy's commit records: the text cursor (the text stage's latest
    processed_at, or the old cursor when the text stage could not be read), this run's id, the newest
    run_date committed so far, and the late-text placeholders still due for a recheck."""
    cursor = plan.text_cursor if plan.text_cursor is not None else strategy.text_cursor
    marks = {
        "run_id": plan.run_id,
        "newest_run_date": max(plan.run_date, store.newest_run_date or plan.run_date),
        "text_due": json.dumps(
            text_due.carried(
                store.text_due or {},
                [v for _, meta in parts for v in meta["text_late"]],
                [v for _, meta in parts for v in meta["text_checked"]],
            )
        ),
    }
    return marks if cursor is None else {**marks, "text_cursor": cursor}


def _withdraw(client, bucket: str, keys: list[str]) -> None:
    """Delete shards nothing references (yet): the bucket is left as the run found it."""
    for key in keys:
        client.delete_object(Bucket=bucket, Key=key)
        log.info("withdrew unreferenced shard %s", key)
