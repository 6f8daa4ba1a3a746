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

A day larger than COMMIT_SLICE videos (a new strategy, a re-fusion of a corpus) is published in slices,
runs of consecutive chunks (`staged_parts`), manifest then state each, so the commit holds one slice's
rows at a time; a slice before the last leaves the table's marks as they were, so a kill between slices
leaves the state saying exactly which videos are done, and the rerun fuses the rest.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields

import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.core import drift, policy, text_due
from clipfarm_fusion.core.layout import MODALITIES, Layout
from clipfarm_fusion.errors import ConcurrentWriteError, SchemaDriftError
from clipfarm_fusion.run import fusion_options, staging
from clipfarm_fusion.run.plan import Plan, StrategyPlan
from clipfarm_fusion.run.staged_parts import Part, StagedParts
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
    staged = StagedParts(client, config, results, COMMIT_SLICE, plan.work)
    if len(staged.parts) != plan.chunks:
        raise ValueError(f"commit of run {plan.run_id} got {len(staged.parts)} of its {plan.chunks} chunks")
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
    staged: StagedParts,
    plan_tables: dict[str, pa.Table],
) -> None:
    name = strategy.name
    judged, dims = _agreeing_parts(client, config, strategy, summary, staged)
    for verdict in judged:
        summary.merge(StrategySummary(**verdict.meta["summary"]), config.sample_size)
    summary.deferred = strategy.delta - sum(verdict.meta["looked_at"] for verdict in judged)
    summary.fused_dim = strategy.fused_dim
    refreshed = plan_tables.get(f"refreshed/{name}")
    refreshed = None if refreshed is None else lake.conform(refreshed, state_schema.SCHEMA)
    changed_ids = staged.changed_ids(name)
    if refreshed is not None:
        changed_ids = pa.concat_arrays([changed_ids, refreshed["video_id"].combine_chunks()])
    store = state.reopen(
        client,
        config.bucket,
        layout,
        name,
        config.s3_patience_seconds,
        strategy.state_version,
        (strategy.text_cursor, strategy.newest_run_date, strategy.text_due),
    )
    metas = [verdict.meta for verdict in judged]
    marks = _marks(plan, strategy, store, metas)  # against the marks the plan read: nothing new to say?
    if not (len(changed_ids) or store.marks_move(marks)):
        return  # nothing to publish: no lease, no request
    with lease.held(client, config.bucket, layout.commit_lease_key(name), plan.run_id, name):
        contested = store.contested(pc.unique(changed_ids))
        if contested:
            _withdraw(client, config.bucket, summary.shards_written)
            raise ConcurrentWriteError(
                f"{name}: {len(contested)} of this run's videos (e.g. {', '.join(sorted(contested)[:3])}) were "
                "committed by another run after this run planned; nothing of this strategy was published. "
                "Rerun the day: it plans again from what that run published"
            )
        store.load_marks()  # as of the commits that landed since the plan (contested read them)
        marks = _marks(plan, strategy, store, metas)
        held = _held_marks(plan, store)
        refused = {verdict.part.index: verdict for verdict in judged if verdict.refused}
        slices = staged.slices(name)
        for number, piece in enumerate(slices, start=1):
            last = number == len(slices)
            tables = [
                _tables(config, staged, name, dims, part, refused.get(part.index)) for part in piece.parts
            ]
            manifest_rows = [t[f"manifest/{name}"] for t in tables if t[f"manifest/{name}"].num_rows]
            rows = [lake.conform(t[f"state/{name}"], state_schema.SCHEMA) for t in tables]
            rows += [piece.holding(refreshed)] if refreshed is not None else []
            changed = _written_by(plan.run_id, pa.concat_tables(rows or [state_schema.SCHEMA.empty_table()]))
            if manifest_rows:
                _publish_manifest(
                    client, config, layout, strategy, summary, dims, pa.concat_tables(manifest_rows)
                )
            if changed.num_rows or (last and store.marks_move(marks)):
                store.commit(changed, marks if last else held)
            if len(slices) > 1:
                log.info(
                    "%s: published slice %d of %d (%d videos)", name, number, len(slices), changed.num_rows
                )
    log.info(
        "%s: %d shards, manifest +%d/~%d rows, %d state rows written",
        name,
        len(summary.shards_written),
        summary.manifest_added,
        summary.manifest_updated,
        len(changed_ids),
    )


@dataclass(frozen=True)
class _Verdict:
    """A chunk's share of one strategy as the commit judged it: `refused` when it fused with other dims
    than the day locks (its `meta` then already counts its fused items as failed)."""

    part: Part
    meta: dict
    refused: bool = False


def _tables(
    config: FusionConfig,
    staged: StagedParts,
    name: str,
    dims: tuple[int, int, int] | None,
    part: Part,
    refused: _Verdict | None,
) -> dict[str, pa.Table]:
    """A chunk's tables as the commit publishes them: as staged, or with a refused chunk's fused items
    failed (`_refusal`, a pure function of the staged rows, so it is the same on every read)."""
    tables = staged.tables(part)
    return tables if refused is None else _refusal(config, name, dims, tables, part.meta[name])[0]


def _agreeing_parts(
    client, config: FusionConfig, strategy: StrategyPlan, summary: StrategySummary, staged: StagedParts
) -> tuple[list[_Verdict], tuple[int, int, int] | None]:
    """The chunks' verdicts on the modality dims, and the dims the day publishes.

    Under a lock, any drift fails the strategy (its shards withdrawn): the lock is the contract. With
    no lock yet, the first chunk that saw dims sets the day's, and a chunk that fused with others has
    its items failed (`_refusal`), as one pass fails every batch that disagrees with its first.
    """
    name = strategy.name
    if strategy.locked:
        metas = [part.meta[name] for part in staged.parts]
        try:
            drift.check(strategy.dims, drift.merge([m["fresh"] for m in metas]), summary.schema_key, name)
        except SchemaDriftError:
            _withdraw(client, config.bucket, [k for m in metas for k in m["summary"]["shards_written"]])
            raise
        return [_Verdict(part, part.meta[name]) for part in staged.parts], strategy.dims
    dims = next((tuple(p.meta[name]["dims"]) for p in staged.parts if p.meta[name]["dims"]), None)
    verdicts = []
    for part in staged.parts:
        meta = part.meta[name]
        if meta["dims"] is None or tuple(meta["dims"]) == dims:
            verdicts.append(_Verdict(part, meta))
            continue
        log.warning(
            "%s: a chunk fused with dims %s, the day locks %s: its fused items fail", name, meta["dims"], dims
        )
        _withdraw(client, config.bucket, meta["summary"]["shards_written"])
        verdicts.append(_Verdict(part, _refusal(config, name, dims, staged.tables(part), meta)[1], True))
    return verdicts, dims


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


COMMIT_SLICE = 500_000  # videos per publish (a manifest upsert, then a state upsert): bounds each MERGE


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


def _refusal(
    config: FusionConfig,
    name: str,
    dims: tuple[int, int, int],
    tables: dict[str, pa.Table],
    meta: dict,
) -> tuple[dict[str, pa.Table], dict]:
    """A chunk of a first run that fused with other dims than the day locks (a day of mixed upstream
    models): its fused items fail against the day's dims, as one pass fails every batch after the first
    that disagrees with it, and its manifest rows are dropped (the caller withdraws its shards)."""
    chunk_dims = tuple(meta["dims"])
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


def _marks(plan: Plan, strategy: StrategyPlan, store: state.StateStore, metas: list[dict]) -> dict[str, str]:
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
                [v for meta in metas for v in meta["text_late"]],
                [v for meta in metas for v in meta["text_checked"]],
            )
        ),
    }
    return marks if cursor is None else {**marks, "text_cursor": cursor}


def _withdraw(client, bucket: str, keys: list[str]) -> None:
    """Delete shards nothing references (yet): the bucket is left as the run found it."""
    for key in keys:
        client.delete_object(Bucket=bucket, Key=key)
        log.info("withdrew unreferenced shard %s", key)
