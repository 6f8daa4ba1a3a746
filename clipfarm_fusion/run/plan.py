"""The plan stage: the horizon, the state and the delta of a day, cut into chunks for the fuse stage.

It reads what decides the day's work (the horizon file, each strategy's state and schema lock, the text
stage) and stages, per chunk, the rows a fuse step needs: the chunk's videos with their text-stage verdict,
each strategy's delta reason and retry base, and each strategy's prior state rows. The chunks are the
union delta in video_id order cut every `chunk_size` videos, so a chunk's contents depend only on the plan.
It returns a `Plan`: a small descriptor (keys and counts, no rows) that any Dagster IO manager can carry.

A corpus-sized day (a new strategy, a re-fusion: nearly every video) is planned one id range at a
time, each about PLAN_SLICE kept horizon rows (`metadata.scan`'s `limit` and `within`): memory is one
range's rows, not the day's, and the ranges' chunks are numbered on, so the fuse and the commit see one
day. Each range rescans the local horizon file, a CPU cost that only such a day pays.

With `--max-items` the day is one chunk, since the cap counts reads in video_id order across the day.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.core import metadata, policy, worklist
from clipfarm_fusion.core.kernels import FusionOptions
from clipfarm_fusion.core.layout import Layout, video_id_problem
from clipfarm_fusion.errors import ConfigError, SchemaDriftError
from clipfarm_fusion.run import candidates, fusion_options, requested, staging
from clipfarm_fusion.run.summary import RunSummary, StrategySummary
from clipfarm_fusion.stores import (
    manifest,
    s3io,
    schema_lock,
    shards,
    state,
    state_schema,
    text_state,
)

WORK_COLUMNS = ["video_id", "url", "captured_at", "captured_ts", "source_hash"]
PLAN_SLICE = 500_000  # kept horizon rows a plan holds at a time: a larger day is planned id range by id range


@dataclass(frozen=True)
class StrategyPlan:
    """What the commit and the fuse steps need to know of one strategy's plan."""

    name: str
    state_version: int | None  # the state table version the plan read (None: no table yet)
    text_cursor: str | None  # the cursor that version recorded
    newest_run_date: str | None  # the newest run date that version recorded
    text_due: dict[str, int]  # the late-text placeholders that version kept due
    locked: bool
    dims: tuple[int, int, int] | None  # the lock's
    fused_dim: int | None  # the lock's
    first_part: int  # the first free shard part number of the day
    delta: int  # videos of this strategy's delta the chunks look at (unsafe ids aside)
    recheck_all: bool = False  # no text-stage signal: every placeholder is rechecked


@dataclass(frozen=True)
class Plan:
    """A planned run: small, picklable, JSON-able. `summary` is the plan's share of the RunSummary."""

    run_id: str
    run_date: str
    started: float  # epoch seconds
    strategies: tuple[StrategyPlan, ...]
    chunks: int
    chunk_size: int
    work: int  # videos to look at, all chunks
    keys_per_item: float  # horizon rows per video to look at: the LIST-vs-GET cost model
    text_problem: str | None
    text_cursor: str | None  # the text stage's latest processed_at, recorded by the commit
    refreshing: bool  # a plan object holds state rows whose cursor columns move (see state.refreshed_rows)
    summary: dict

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.strategies)


def check_run_date(run_date: date) -> None:
    """A run is pinned to a day that has happened: a future date would mark videos done under a date
    they were never fused for (the work-list rules (docs/contract.md))."""
    today = datetime.now(UTC).date()
    if run_date > today:
        raise ConfigError(
            f"run date {run_date} is after today ({today} UTC): fuse a day that has happened, "
            "or leave --run-date out for today"
        )


def plan(config: FusionConfig, run_date: date, client, log: logging.Logger) -> Plan:
    """Read the day, decide its delta, stage its chunks. Raises like `pipeline.run`; writes only staged
    objects (and, the first time, the seed-era import of the stores)."""
    check_run_date(run_date)
    layout = Layout(config.root)
    staging.sweep(client, config.bucket, layout)
    with s3io.local_copy(client, config.metadata_location, Path(config.state_dir)) as horizon_file:
        metadata.require_body(horizon_file, config.metadata_location)
        with text_state.open_text_state(client, config.text_state_location, Path(config.state_dir)) as text:
            return _plan(config, run_date, client, layout, horizon_file, text, log)


def _plan(
    config: FusionConfig,
    run_date: date,
    client,
    layout: Layout,
    horizon_file: Path,
    text: text_state.TextState,
    log: logging.Logger,
) -> Plan:
    """Read the inputs, open each strategy, then plan and stage the day one id range at a time (one
    range on a normal day; about PLAN_SLICE kept horizon rows each on a corpus-sized one)."""
    started = time.time()
    run_id = f"{run_date.isoformat()}-{uuid.uuid4().hex[:12]}"
    summary = RunSummary(run_date=run_date.isoformat(), bucket=config.bucket, root=config.root)
    summary.text_state = text.problem or "available"
    stores = {
        name: state.open_store(
            client, config.bucket, layout, name, Path(config.state_dir), config.s3_patience_seconds
        )
        for name in config.strategies
    }
    requests = {
        name: requested.read(client, config.bucket, layout, name, store, config.s3_patience_seconds)
        for name, store in stores.items()
    }
    chosen, scan = _read_inputs(
        config, run_date, client, layout, horizon_file, text, stores, requests, summary, log
    )
    horizon_rows = scan.horizon_rows
    options = fusion_options.load(client, config, config.strategies)
    opened = [
        s
        for name, store in stores.items()
        if (
            s := _open_strategy(
                config, client, layout, name, store, chosen, options, requests[name], summary, log
            )
        )
    ]
    ranges = scan.ranges()
    chunk_size = config.chunk_size
    chunks = work = 0
    refreshed: dict[str, list[pa.Table]] = {s.name: [] for s in opened}
    for number, within in enumerate(ranges, 1):
        if len(ranges) > 1:
            scan = _scan(config, run_date, horizon_file, chosen, within)
            log.info(
                "planning id range %d of %d (%s..%s): %d candidates",
                number,
                len(ranges),
                *within,
                len(scan.rows),
            )
        horizon, invalid, problems = _split_invalid(scan)
        deltas, priors = {}, {}
        for strategy in opened:
            deltas[strategy.name], priors[strategy.name], fresh = _range_delta(
                config, run_date, strategy, horizon, invalid, problems
            )
            refreshed[strategy.name].append(fresh)
        rows = _work(text, _union_delta(deltas), deltas)
        if config.max_items:  # one range (see _read_inputs): the cap counts reads across the day
            chunk_size = len(rows) or 1
        chunks += _stage(config, client, layout, run_id, rows, chunk_size, chunks, priors)
        work += len(rows)
    planned = [_finish_strategy(config, client, layout, run_date, s, summary, log) for s in opened]
    log.info(
        "delta: %s; %d videos to look at in %d chunks of up to %d%s",
        ", ".join(f"{name}={s.delta}" for name, s in summary.strategies.items()) or "none",
        work,
        chunks,
        chunk_size,
        f", of which at most {config.max_items} are read (--max-items)" if config.max_items else "",
    )
    return Plan(
        run_id=run_id,
        run_date=run_date.isoformat(),
        started=started,
        strategies=tuple(planned),
        chunks=chunks,
        chunk_size=chunk_size,
        work=work,
        keys_per_item=horizon_rows / max(work, 1),
        text_problem=text.problem,
        text_cursor=None if text.problem else text.cursor,
        refreshing=_stage_refreshed(config, client, layout, run_id, refreshed),
        summary=summary.to_dict(),
    )


def _read_inputs(
    config: FusionConfig,
    run_date: date,
    client,
    layout: Layout,
    horizon_file: Path,
    text: text_state.TextState,
    stores: dict[str, state.StateStore],
    requests: dict[str, requested.Requested],
    summary: RunSummary,
    log: logging.Logger,
) -> tuple[candidates.Candidates, metadata.HorizonScan]:
    """The candidates (`_select`, plus the listed text files of a full recheck and the videos that
    re-fusion requests name), then one scan of the horizon for the rows they need, as of `run_date`:
    its rows, or (past PLAN_SLICE kept rows, unless --max-items holds the day in one chunk) the id
    ranges to plan one at a time. The scan's counts are the whole horizon's."""
    present = (
        candidates.text_files(client, config.bucket, layout, config.s3_patience_seconds)
        if config.recheck_text_files
        else []
    )
    if config.recheck_text_files:
        summary.text_files_listed = len(present)
    chosen = candidates.select(stores, text, config.text_terminal_statuses, present)
    named = [r.ids for r in requests.values() if r.requests]
    if named:
        chosen = replace(chosen, also=pa.concat_arrays([chosen.also, *named]))
    scan = _scan(config, run_date, horizon_file, chosen, None, None if config.max_items else PLAN_SLICE)
    _report_bad_dates(summary, scan, config, log)
    log.info(
        "horizon as of %s: %d rows, %s",
        run_date,
        scan.horizon_rows,
        f"{len(scan.rows)} of them candidates"
        if scan.bounds is None
        else f"more than {PLAN_SLICE} of them candidates: planned in {len(scan.ranges())} id ranges",
    )
    return chosen, scan


def _scan(
    config: FusionConfig,
    run_date: date,
    horizon_file: Path,
    chosen: candidates.Candidates,
    within: metadata.IdRange | None,
    limit: int | None = None,
) -> metadata.HorizonScan:
    return metadata.scan(
        horizon_file,
        config.metadata_location,
        run_date,
        config.include_captured_at_in_hash,
        known=chosen.known,
        also=chosen.also,
        sample=config.sample_size,
        within=within,
        limit=limit,
    )


def _split_invalid(scan: metadata.HorizonScan) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """(the candidate rows with safe ids, those with unsafe ids, why each of those is unsafe)."""
    problems = scan.rows["video_id"].map(video_id_problem)
    return scan.rows[problems.isna()], scan.rows[problems.notna()], problems


@dataclass
class _Strategy:
    """One strategy of the plan, across its id ranges."""

    name: str
    store: state.StateStore
    lock: schema_lock.SchemaLock | None
    recheck: set[str] | None
    requests: requested.Requested
    summary: StrategySummary
    live: set[str] = field(default_factory=set)  # the requests some range still fuses for
    delta: int = 0  # videos of the delta the chunks look at, all ranges (unsafe ids aside)


def _open_strategy(
    config: FusionConfig,
    client,
    layout: Layout,
    name: str,
    store: state.StateStore,
    chosen: candidates.Candidates,
    options: FusionOptions,
    requests: requested.Requested,
    summary: RunSummary,
    log: logging.Logger,
) -> _Strategy | None:
    """The strategy's lock and summary, or None when its lock refuses the run's options (it stops alone)."""
    schema_key = layout.schema_key(name)
    lock = schema_lock.read(client, config.bucket, schema_key)
    manifest.open_table(client, config.bucket, layout, name, config.s3_patience_seconds)  # imports once
    strategy_summary = StrategySummary(
        manifest_key=layout.manifest_table_key(name),
        schema_key=schema_key,
        state_key=layout.state_table_key(name),
        state_source=store.source,
    )
    try:
        schema_lock.check_options(lock, name, options, schema_key)
    except SchemaDriftError as exc:
        summary.stopped[name] = str(exc)
        log.error("%s stopped, nothing of it published: %s", name, exc)
        return None
    summary.strategies[name] = strategy_summary
    return _Strategy(name, store, lock, chosen.recheck[name], requests, strategy_summary)


def _range_delta(
    config: FusionConfig,
    run_date: date,
    strategy: _Strategy,
    horizon: pd.DataFrame,
    invalid: pd.DataFrame,
    problems: pd.Series,
) -> tuple[pd.DataFrame, pd.DataFrame, pa.Table]:
    """One strategy's work list over one id range of the horizon (indexed by video_id), its prior state
    rows (sorted by video_id), and the state rows the horizon refreshes without any work; counted in the
    strategy's summary, which adds up over the ranges."""
    store, summary = strategy.store, strategy.summary
    prior = store.rows_for(pa.array(horizon["video_id"].tolist(), pa.string()))
    delta = worklist.compute(horizon, prior, strategy.recheck, run_date.isoformat())
    if strategy.requests.requests:
        delta, live = requested.honour(strategy.requests, horizon, prior, delta, run_date, summary)
        strategy.live |= live
    if store.newest_run_date and store.newest_run_date > run_date.isoformat():
        summary.behind = store.newest_run_date
        summary.left_to_later += len(worklist.compute(horizon, prior, strategy.recheck)) - len(delta)
    _record_invalid(summary, invalid, problems, config.sample_size)
    summary.delta += len(delta) + len(invalid)
    strategy.delta += len(delta)
    refreshed = pa.Table.from_pylist(state.refreshed_rows(horizon, prior, delta), schema=state_schema.SCHEMA)
    # chunks are id ranges: each takes its slice of the sorted prior rows
    return delta.set_index("video_id"), prior.sort_index(), refreshed


def _finish_strategy(
    config: FusionConfig,
    client,
    layout: Layout,
    run_date: date,
    strategy: _Strategy,
    summary: RunSummary,
    log: logging.Logger,
) -> StrategyPlan:
    """The strategy's plan once every range is planned: its requests settled, its shard numbering."""
    store, lock, counted = strategy.store, strategy.lock, strategy.summary
    if strategy.requests.requests:
        requested.finish(client, config.bucket, strategy.name, strategy.requests, strategy.live, counted, log)
    if counted.behind:
        log.info(
            "%s: this run (%s) is behind the newest committed run date %s: it fuses new and changed "
            "videos and upgrades placeholders, and leaves %d videos that a later run holds in a newer "
            "form (or has retried) as they are",
            strategy.name,
            run_date,
            counted.behind,
            counted.left_to_later,
        )
    delta = strategy.delta
    return StrategyPlan(
        name=strategy.name,
        state_version=store.version,
        text_cursor=store.text_cursor,
        newest_run_date=store.newest_run_date,
        text_due=dict(store.text_due or {}),
        locked=lock is not None,
        dims=lock.dims if lock else None,
        fused_dim=lock.fused_dim if lock else None,
        first_part=shards.first_free_part(client, config.bucket, layout, strategy.name, run_date)
        if delta
        else 0,
        delta=delta,
        recheck_all=strategy.recheck is None,
    )


def _work(text: text_state.TextState, work: pd.DataFrame, deltas: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The union work rows of one id range with their text-stage verdict and each strategy's reason and
    retry base."""
    text_status, text_hash = text.lookup(work["video_id"].tolist())
    work = work.assign(text_status=text_status, text_hash=text_hash)
    for name, delta in deltas.items():
        work[f"reason/{name}"] = delta["reason"].reindex(work["video_id"]).to_numpy(dtype=object)
        work[f"retry_base/{name}"] = delta["retry_base"].reindex(work["video_id"]).to_numpy(dtype="float64")
    return work


def _stage(
    config: FusionConfig,
    client,
    layout: Layout,
    run_id: str,
    work: pd.DataFrame,
    chunk_size: int,
    first: int,
    priors: dict[str, pd.DataFrame],
) -> int:
    """One staged object per chunk of one id range (its work rows and the state rows of its id range),
    numbered from `first`; how many."""
    count = math.ceil(len(work) / chunk_size)
    for index in range(count):
        rows = work.iloc[index * chunk_size : (index + 1) * chunk_size]
        tables = {"work": pa.Table.from_pandas(rows, preserve_index=False)}
        low, high = rows["video_id"].iloc[0], rows["video_id"].iloc[-1]
        for name, prior in priors.items():
            held = prior.loc[low:high]  # the state rows of the chunk's id range (a few others do no harm)
            tables[f"prior/{name}"] = pa.Table.from_pandas(
                held.reset_index(), schema=state_schema.SCHEMA, preserve_index=False
            )
        staging.put(
            client,
            config.bucket,
            layout.chunk_input_key(run_id, first + index),
            tables,
            {},
            config.s3_patience_seconds,
        )
    return count


def _stage_refreshed(
    config: FusionConfig, client, layout: Layout, run_id: str, refreshed: dict[str, list[pa.Table]]
) -> bool:
    """One staged object for the state rows refreshed without work, when there are any; whether there were."""
    tables = {f"refreshed/{n}": pa.concat_tables(t) for n, t in refreshed.items() if t}
    refreshing = {key: table for key, table in tables.items() if table.num_rows}
    if refreshing:  # most days have none: then no object, and the commit reads none
        staging.put(
            client, config.bucket, layout.plan_key(run_id), refreshing, {}, config.s3_patience_seconds
        )
    return bool(refreshing)


def _report_bad_dates(summary: RunSummary, scan: metadata.HorizonScan, config: FusionConfig, log) -> None:
    """captured_at values that are not ISO 8601 count as undated (so the as-of filter keeps them): say so,
    with samples, or refuse the run under --strict-dates."""
    if not scan.unparseable:
        return
    samples = [f"{v}: {c!r}" for v, c in scan.unparseable_samples[["video_id", "captured_at"]].to_numpy()]
    where = config.metadata_location
    if config.strict_dates:
        raise ConfigError(
            f"metadata {where}: {scan.unparseable} captured_at values are not ISO 8601 (e.g. {'; '.join(samples[:3])}); "
            "fix the export, or run without --strict-dates to treat them as undated"
        )
    summary.unparseable_dates = scan.unparseable
    summary.unparseable_date_samples = samples
    log.warning(
        "metadata %s: %d captured_at values are not ISO 8601 and count as undated (e.g. %s); "
        "--strict-dates refuses such a file",
        where,
        scan.unparseable,
        "; ".join(samples[:3]),
    )


def _record_invalid(
    summary: StrategySummary, invalid: pd.DataFrame, problems: pd.Series, sample_size: int
) -> None:
    ids = invalid["video_id"].tolist()
    errors = {
        vid: f"{problems[i]}; the id is never used in a key"
        for vid, i in zip(ids, invalid.index, strict=True)
    }
    summary.record([policy.INVALID_VIDEO_ID] * len(ids), ids, errors, sample_size)


def _union_delta(deltas: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Videos any strategy needs, in video_id order, each read once for all strategies."""
    frames = [d[WORK_COLUMNS[1:]] for d in deltas.values()]
    if not frames:
        return pd.DataFrame(columns=WORK_COLUMNS)
    union = pd.concat(frames)
    union = union[~union.index.duplicated()].sort_index()
    return union.rename_axis("video_id").reset_index()
