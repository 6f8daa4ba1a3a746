"""run(config, run_date) -> RunSummary: the one place that knows the order of the job.

config -> metadata + state -> delta -> fetch -> policy -> fuse -> shards -> manifest -> state -> summary.

Work goes in batches of `shard_size` videos, so memory is bounded by the shard size, not the day.
Each embedding object is read once per run however many strategies are fused. Nothing but shards is
written until the whole day is fused; then, per strategy, the schema lock, the manifest and last the
state DB are committed, so a crash at any point leaves at worst unreferenced shards and a rerun converges.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import delta as delta_rules
from . import latest, manifest, metadata, policy, projection, s3io, schema_lock, state, text_state
from .config import FusionConfig
from .errors import ConfigError, ItemError, SchemaDriftError
from .fuse import STRATEGIES, FusionOptions, fuse
from .known import KnownIndex
from .layout import MODALITIES, Layout, video_id_problem
from .npy import decode_vector
from .schema_lock import SchemaLock
from .shards import ShardWriter
from .summary import RunSummary, StrategySummary

ProgressCallback = Callable[[int, int], None]


@dataclass
class StrategyRun:
    """Everything one strategy accumulates during a run, committed at the end."""

    name: str
    store: state.StateStore
    prior: pd.DataFrame
    lock: SchemaLock | None
    table: manifest.ManifestTable  # opened (a seed-era file imported) before the first shard is written
    delta: pd.DataFrame
    writer: ShardWriter
    summary: StrategySummary
    options: FusionOptions = field(default_factory=FusionOptions)
    dims: tuple[int, int, int] | None = None
    fresh_dims: dict[str, list[np.ndarray]] = field(default_factory=dict)  # drift evidence so far
    manifest_rows: list[pa.Table] = field(default_factory=list)
    state_rows: list[dict] = field(default_factory=list)
    refreshed: list[dict] = field(default_factory=list)  # unchanged items whose cursor columns move


@dataclass
class Batch:
    """One batch of the union delta, with what was fetched and decoded for it."""

    rows: pd.DataFrame
    present: dict[str, np.ndarray]
    text_status: np.ndarray
    text_hash: np.ndarray
    statuses: np.ndarray
    vectors: dict[str, list[np.ndarray | None]]
    errors: dict[int, str]
    reads: int  # items whose video and audio were read: what --max-items counts


def run(
    config: FusionConfig,
    run_date: date,
    *,
    client=None,
    log: logging.Logger | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunSummary:
    """Fuse the day's delta for every configured strategy and publish it.

    Raises ConfigError for bad input and StoreError for a published store that cannot be read (nothing
    written either way), S3UnavailableError when S3 stays unreachable past `config.s3_patience_seconds`
    (nothing recorded against any item). A strategy that must stop (schema drift, or options that differ
    from its lock) stops alone: its shards are withdrawn, it is named in `summary.stopped`, and the
    other strategies publish.
    """
    log = log or logging.getLogger("clipfarm_fusion")
    check_run_date(run_date)
    client = client or s3io.make_client(config.fetch_threads)
    try:
        with s3io.local_copy(client, config.metadata_location, Path(config.state_dir)) as horizon_file:
            metadata.require_body(horizon_file, config.metadata_location)
            with text_state.open_text_state(
                client, config.text_state_location, Path(config.state_dir)
            ) as text:
                return _run(config, run_date, client, horizon_file, text, log, on_progress)
    except Exception as exc:
        if s3io.is_fault(exc):  # past botocore's own retries: an outage, not a bug and not the items
            raise s3io.unavailable(exc, "running the day") from exc
        raise


def _run(
    config: FusionConfig,
    run_date: date,
    client,
    horizon_file: Path,
    text: text_state.TextState,
    log: logging.Logger,
    on_progress,
) -> RunSummary:
    layout = Layout(config.root)
    started = time.monotonic()
    summary = RunSummary(run_date=run_date.isoformat(), bucket=config.bucket, root=config.root)
    summary.text_state = text.problem or "available"
    stores = {
        name: state.open_store(
            client, config.bucket, layout, name, Path(config.state_dir), config.s3_patience_seconds
        )
        for name in config.strategies
    }
    selection = _select(stores, text, config.text_terminal_statuses)
    scan = metadata.scan(
        horizon_file,
        config.metadata_location,
        run_date,
        config.include_captured_at_in_hash,
        known=selection.known,
        also=selection.also,
        sample=config.sample_size,
    )
    _report_bad_dates(summary, scan, config, log)
    horizon = scan.rows
    problems = horizon["video_id"].map(video_id_problem)
    invalid, horizon = horizon[problems.notna()], horizon[problems.isna()]
    log.info(
        "horizon as of %s: %d rows, %d of them candidates (%d with unsafe ids)",
        run_date,
        scan.horizon_rows,
        len(horizon),
        len(invalid),
    )

    options = config.options
    if "projection" in config.strategies:
        options = replace(options, projection=projection.load(client, config.projection_uri, STRATEGIES))
    runs: list[StrategyRun] = []
    for name in config.strategies:
        strategy_run = _open_strategy(
            client, config, layout, stores[name], selection.recheck[name], name, horizon, run_date, options
        )
        try:
            schema_lock.check_options(
                strategy_run.lock, name, strategy_run.options, strategy_run.summary.schema_key
            )
        except SchemaDriftError as exc:
            _stop(summary, strategy_run, exc, client, config.bucket, log)
            continue
        _record_invalid(strategy_run, invalid, problems, config.sample_size)
        strategy_run.summary.delta = len(strategy_run.delta) + len(invalid)
        runs.append(strategy_run)
    work = _union_delta(runs)
    log.info(
        "delta: %s; %d videos to look at%s",
        ", ".join(f"{r.name}={r.summary.delta}" for r in runs) or "none",
        len(work),
        f", of which at most {config.max_items} are read (--max-items)" if config.max_items else "",
    )
    keys_per_item = scan.horizon_rows / max(len(work), 1)
    looked_at = _fuse_all(
        client, config, layout, work, runs, summary, text, keys_per_item, started, log, on_progress
    )
    for strategy_run in runs:
        strategy_run.summary.deferred = int(np.count_nonzero(~strategy_run.delta.index.isin(looked_at)))
    for strategy_run in list(runs):
        cursors = _cursors(strategy_run, text)
        try:
            _commit(client, config, strategy_run, cursors, log)
        except SchemaDriftError as exc:
            _stop(summary, strategy_run, exc, client, config.bucket, log)
            continue
        strategy_run.summary.seconds = round(time.monotonic() - started, 3)
        summary.strategies[strategy_run.name] = strategy_run.summary
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


@dataclass(frozen=True)
class Selection:
    """Which horizon rows a run hashes and compares (see `metadata.scan`), and per strategy which
    placeholders the text stage has news for (None: every placeholder among the candidates)."""

    known: KnownIndex
    also: pa.Array
    recheck: dict[str, set[str] | None]


def _select(
    stores: dict[str, state.StateStore], text: text_state.TextState, terminal: tuple[str, ...]
) -> Selection:
    """Candidates in O(delta) as far as the inputs allow: videos some strategy has not processed in their
    current form (see `metadata.scan`), open items, and placeholders the text stage has news for: its
    row changed since that strategy's last commit, or (on the first run, with no cursor yet) its status
    is no longer a terminal one such as `no_captions`. Without a usable signal (the text stage
    unreadable, or no `processed_at` column in it) every placeholder is rechecked, a text GET each."""
    known: KnownIndex | None = None
    also: list[pa.Array] = []
    recheck: dict[str, set[str] | None] = {}
    for name, store in stores.items():
        known = store.known() if known is None else known.agreeing(store.known())
        also.append(store.open_ids())
        changed = None if text.problem else text.changed_since(store.text_cursor)
        if changed is not None and store.text_cursor is None:  # no cursor yet: the status tells
            candidates = store.placeholders()
            statuses, _ = text.lookup(candidates.to_pylist())
            changed = candidates.filter(
                pa.array([s not in terminal for s in statuses], pa.bool_())
            ).to_pylist()
        if changed is None:
            also.append(store.placeholders())
            recheck[name] = None
        else:
            placeholders = store.placeholders(among=pa.array(changed, pa.string()))
            also.append(placeholders)
            recheck[name] = set(placeholders.to_pylist())
    return Selection(
        known=known if known is not None else KnownIndex.empty(),
        also=pa.concat_arrays([a.cast(pa.string()) for a in also]) if also else pa.array([], pa.string()),
        recheck=recheck,
    )


def _cursors(strategy_run: StrategyRun, text: text_state.TextState) -> dict[str, str]:
    """The text cursor this strategy's commit records: the text stage's latest processed_at, or the old
    cursor when the text stage could not be read."""
    cursor = strategy_run.store.text_cursor if text.problem or text.cursor is None else text.cursor
    return {} if cursor is None else {"text_cursor": cursor}


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


def check_run_date(run_date: date) -> None:
    """A run is pinned to a day that has happened: a future date would mark videos done under a date
    they were never fused for (DESIGN §3)."""
    today = datetime.now(UTC).date()
    if run_date > today:
        raise ConfigError(
            f"run date {run_date} is after today ({today} UTC): fuse a day that has happened, "
            "or leave --run-date out for today"
        )


def _stop(
    summary: RunSummary, strategy_run: StrategyRun, exc: SchemaDriftError, client, bucket: str, log
) -> None:
    """Take one strategy out of the run: withdraw the shards it wrote (nothing references them yet, so
    the bucket is left as the run found it) and name it in the summary. The others go on."""
    for key in strategy_run.writer.written:
        client.delete_object(Bucket=bucket, Key=key)
        log.info("withdrew unreferenced shard %s", key)
    strategy_run.writer.written.clear()
    summary.stopped[strategy_run.name] = str(exc)
    log.error("%s stopped, nothing of it published: %s", strategy_run.name, exc)


def _fuse_all(
    client,
    config,
    layout,
    work,
    runs,
    summary,
    text: text_state.TextState,
    keys_per_item,
    started,
    log,
    on_progress,
) -> list[str]:
    """Fetch, judge and fuse the delta batch by batch; each batch's shards are written as it goes.

    A strategy that shows schema drift is stopped and dropped from `runs`; the others go on.
    `--max-items` caps the videos whose embeddings are read, in video_id order: items that cannot
    progress (text still owed, a placeholder whose text has not come) cost no read and never use the
    cap, so they cannot starve the backlog behind them. Returns the video_ids looked at; the rest of
    the delta is deferred to the next run.
    """
    budget = config.max_items
    looked_at: list[str] = []
    for start in range(0, len(work), config.shard_size):
        if not runs or budget == 0:
            break
        batch = _fetch_batch(
            client,
            config,
            layout,
            work.iloc[start : start + config.shard_size],
            runs,
            text,
            keys_per_item,
            budget,
        )
        if budget is not None:
            budget -= batch.reads
        last = start + config.shard_size >= len(work) or budget == 0
        for strategy_run in list(runs):
            try:
                outcome = _judge(config, strategy_run, batch, last)
            except SchemaDriftError as exc:
                _stop(summary, strategy_run, exc, client, config.bucket, log)
                runs.remove(strategy_run)
                continue
            _publish_batch(config, layout, strategy_run, batch, outcome, text.problem)
        looked_at += batch.rows["video_id"].tolist()
        elapsed = time.monotonic() - started
        log.info(
            "looked at %d/%d videos (%.0f/s)",
            len(looked_at),
            len(work),
            len(looked_at) / elapsed if elapsed else 0.0,
        )
        if on_progress:
            on_progress(len(looked_at), len(work))
    return looked_at


def _open_strategy(
    client,
    config: FusionConfig,
    layout: Layout,
    store: state.StateStore,
    recheck: set[str] | None,
    name: str,
    horizon: pd.DataFrame,
    run_date: date,
    options: FusionOptions,
) -> StrategyRun:
    prior = store.rows_for(pa.array(horizon["video_id"].tolist(), pa.string()))
    schema_key = layout.schema_key(name)
    lock = schema_lock.read(client, config.bucket, schema_key)
    table = manifest.open_table(client, config.bucket, layout, name, config.s3_patience_seconds)
    delta = delta_rules.compute(horizon, prior, recheck)
    return StrategyRun(
        name=name,
        store=store,
        prior=prior,
        lock=lock,
        table=table,
        delta=delta.set_index("video_id"),
        refreshed=_refreshed_rows(horizon, prior, delta),
        writer=ShardWriter(client, config.bucket, layout, name, run_date),
        summary=StrategySummary(
            manifest_key=layout.manifest_table_key(name),
            schema_key=schema_key,
            state_key=layout.state_table_key(name),
            state_source=store.source,
        ),
        dims=lock.dims if lock else None,
        options=options,
    )


def _record_invalid(
    strategy_run: StrategyRun, invalid: pd.DataFrame, problems: pd.Series, sample_size: int
) -> None:
    ids = invalid["video_id"].tolist()
    errors = {
        vid: f"{problems[i]}; the id is never used in a key"
        for vid, i in zip(ids, invalid.index, strict=True)
    }
    strategy_run.summary.record([policy.INVALID_VIDEO_ID] * len(ids), ids, errors, sample_size)


def _union_delta(runs: list[StrategyRun]) -> pd.DataFrame:
    """Videos any strategy needs, in video_id order, each read once for all strategies."""
    frames = [r.delta[["url", "captured_at", "captured_ts", "source_hash"]] for r in runs]
    if not frames:
        return pd.DataFrame(columns=["video_id", "url", "captured_at", "captured_ts", "source_hash"])
    union = pd.concat(frames)
    union = union[~union.index.duplicated()].sort_index()
    return union.rename_axis("video_id").reset_index()


LIST_PAGE = 1000
LIST_BREAK_EVEN = 0.01  # one LIST page costs what one 404 GET costs: worth it from 1 missing key in 100


def _existing_keys(
    client, bucket: str, prefix: str, keys: list[str], keys_per_item: float
) -> set[str] | None:
    """Which of `keys` exist, from a LIST of their key range, when that costs fewer requests than a
    404 GET per missing object; None means GET every key and treat 404 as missing.

    The range of a batch holds about `len(keys) * keys_per_item` keys (`keys_per_item` = horizon / delta):
    a full day or a backfill lists a few pages per batch, a small daily delta over a big corpus would
    list the whole prefix and so GETs instead. A prefix fuller than the horizon predicts is cut off.
    """
    if not keys:
        return set()
    pages = math.ceil(len(keys) * keys_per_item / LIST_PAGE)
    if pages > len(keys) * LIST_BREAK_EVEN:
        return None
    return s3io.list_range(client, bucket, prefix, min(keys), max(keys), max_pages=2 * pages + 1)


def _fetch(
    client, config: FusionConfig, layout: Layout, modality: str, ids: list[str], keys_per_item: float
) -> list[bytes | None | Exception]:
    """Bodies of the modality's objects for `ids` (None where missing), without a GET for objects a
    LIST showed are not there."""
    keys = [layout.embedding_key(modality, vid) for vid in ids]
    existing = s3io.with_patience(
        lambda: _existing_keys(client, config.bucket, layout.embedding_prefix(modality), keys, keys_per_item),
        f"listing s3://{config.bucket}/{layout.embedding_prefix(modality)}",
        config.s3_patience_seconds,
    )
    wanted = keys if existing is None else [k for k in keys if k in existing]
    bodies = s3io.get_many(
        client, config.bucket, wanted, config.fetch_threads, patience_s=config.s3_patience_seconds
    )
    return [bodies.get(k) for k in keys]


def _fetch_batch(
    client, config, layout, rows, runs, text: text_state.TextState, keys_per_item, budget: int | None
) -> Batch:
    """Read text first; read video and audio only for items the text verdict does not rule out, and for
    at most `budget` of them (None: no cap): the batch then ends before the first item over the cap."""
    ids = rows["video_id"].tolist()
    text_body = _fetch(client, config, layout, "text", ids, keys_per_item)
    text_present = np.array([b is not None for b in text_body], dtype=bool)
    text_status, text_hash = text.lookup(ids)
    source_hash = rows["source_hash"].to_numpy(dtype=object)

    def gate_inputs() -> dict:
        return dict(
            text_present=text_present,
            text_state_available=text.problem is None,
            text_status=text_status,
            text_hash=text_hash,
            source_hash=source_hash,
            text_terminal_statuses=config.text_terminal_statuses,
        )

    wanted = np.zeros(len(ids), dtype=bool)
    for strategy_run in runs:
        wanted |= _active(strategy_run, ids, text_present)
    need_required = wanted & ~np.isin(policy.gate(**gate_inputs()), list(policy.TEXT_SKIP_STATUSES))
    if budget is not None and np.count_nonzero(need_required) > budget:
        cut = int(np.flatnonzero(need_required)[budget])
        rows, ids, text_body = rows.iloc[:cut], ids[:cut], text_body[:cut]
        text_present, text_status, text_hash, source_hash, need_required = (
            column[:cut] for column in (text_present, text_status, text_hash, source_hash, need_required)
        )
    count = len(ids)
    fetch_ids = [vid for vid, need in zip(ids, need_required, strict=True) if need]
    bodies: dict[str, list[bytes | None | Exception]] = {"text": text_body}
    for modality in ("video", "audio"):
        fetched = dict(
            zip(fetch_ids, _fetch(client, config, layout, modality, fetch_ids, keys_per_item), strict=True)
        )
        bodies[modality] = [fetched.get(vid, b"") for vid in ids]
    present = {m: np.array([b is not None for b in bodies[m]], dtype=bool) for m in MODALITIES}
    statuses = policy.gate(**gate_inputs(), video_present=present["video"], audio_present=present["audio"])
    vectors: dict[str, list[np.ndarray | None]] = {m: [None] * count for m in MODALITIES}
    errors: dict[int, str] = {}
    for i in np.flatnonzero(np.isin(statuses, policy.FUSED_STATUSES)):
        messages = []
        for modality in MODALITIES:
            body = bodies[modality][i]
            if body is None:
                continue
            try:
                if isinstance(body, Exception):
                    raise ItemError(ids[i], f"{modality} embedding: fetch failed ({body})")
                vectors[modality][i] = decode_vector(body, ids[i], modality)
            except ItemError as exc:
                messages.append(exc.message)
        if messages:
            errors[int(i)] = "; ".join(messages)
    return Batch(
        rows.reset_index(drop=True),
        present,
        text_status,
        text_hash,
        statuses,
        vectors,
        errors,
        reads=int(np.count_nonzero(need_required)),
    )


def _active(strategy_run: StrategyRun, ids: list[str], text_present: np.ndarray) -> np.ndarray:
    """Items this strategy works on: in its delta, except placeholders whose text is still missing."""
    reasons = strategy_run.delta["reason"].reindex(ids).to_numpy(dtype=object)
    member = pd.notna(reasons)
    return member & ~((reasons == delta_rules.UPGRADE_CHECK) & ~text_present)


@dataclass
class Outcome:
    """One strategy's verdict on a batch, before anything is written."""

    index: np.ndarray
    statuses: np.ndarray
    errors: dict[int, str]
    fused_index: np.ndarray
    vectors: np.ndarray | None
    upgrade_checked: int


def _dims(batch: Batch, modality: str, index: np.ndarray) -> np.ndarray:
    return np.array(
        [0 if batch.vectors[modality][i] is None else batch.vectors[modality][i].shape[0] for i in index],
        dtype=np.int64,
    )


def _judge(config: FusionConfig, strategy_run: StrategyRun, batch: Batch, last: bool) -> Outcome:
    """Statuses, failures and fused vectors of one strategy for a batch. Raises on schema drift."""
    ids = batch.rows["video_id"].tolist()
    active = _active(strategy_run, ids, batch.present["text"])
    reasons = strategy_run.delta["reason"].reindex(ids).to_numpy(dtype=object)
    upgrade_checked = int(np.count_nonzero((reasons == delta_rules.UPGRADE_CHECK) & ~active))
    index = np.flatnonzero(active)
    statuses = batch.statuses[index].copy()
    candidates = index[np.isin(statuses, policy.FUSED_STATUSES)]
    observed = {
        "video_dim": _dims(batch, "video", candidates),
        "audio_dim": _dims(batch, "audio", candidates),
        "text_dim": _dims(batch, "text", candidates),
    }
    if strategy_run.lock is not None:
        _check_drift(strategy_run, observed, reasons[candidates], last)
    if strategy_run.dims is None and candidates.size:
        majority = [schema_lock.majority_dim(observed[name]) for name in schema_lock.DIM_FIELDS]
        if majority[0] and majority[1]:
            strategy_run.dims = (majority[0], majority[1], majority[2] or config.text_dim)
    errors = {int(i): batch.errors[int(i)] for i in candidates if int(i) in batch.errors}
    if strategy_run.dims is not None:
        source = "schema.json" if strategy_run.lock else "this run's majority"
        for name, modality, expected in zip(
            schema_lock.DIM_FIELDS, MODALITIES, strategy_run.dims, strict=True
        ):
            for i, found in zip(candidates, observed[name], strict=True):
                if found and found != expected and int(i) not in errors:
                    errors[int(i)] = f"{modality} embedding: {found}-d, expected {expected}-d ({source})"
    fused_index = np.array([i for i in candidates if int(i) not in errors], dtype=np.int64)
    vectors = None
    if fused_index.size:
        dv, da, dt = strategy_run.dims
        text_present = batch.present["text"][fused_index]
        zeros = np.zeros(dt, dtype=np.float32)
        vectors = fuse(
            strategy_run.name,
            np.stack([batch.vectors["video"][i] for i in fused_index]),
            np.stack([batch.vectors["audio"][i] for i in fused_index]),
            np.stack(
                [
                    batch.vectors["text"][i] if present else zeros
                    for i, present in zip(fused_index, text_present, strict=True)
                ]
            ),
            text_present,
            strategy_run.options,
        )
    return Outcome(index, statuses, errors, fused_index, vectors, upgrade_checked)


DRIFT_MIN_SAMPLE = 16


def _check_drift(
    strategy_run: StrategyRun, observed: dict[str, np.ndarray], reasons: np.ndarray, last: bool
) -> None:
    """Stop the run when most of its fresh items (new or changed since the last run) disagree with the lock.

    Retries of items that already failed say nothing about the upstream model, so they are not evidence;
    the evidence accumulates over the run's batches and is judged once there are DRIFT_MIN_SAMPLE fresh
    items or the run is at its last batch, so a cluster of bad files in one batch is not taken for drift.
    """
    fresh = np.isin(reasons.astype(object), [delta_rules.NEW, delta_rules.HASH_CHANGED])
    for name, dims in observed.items():
        strategy_run.fresh_dims.setdefault(name, []).append(dims[fresh])
    evidence = {name: np.concatenate(parts) for name, parts in strategy_run.fresh_dims.items()}
    seen = max(int(np.count_nonzero(d)) for d in evidence.values())
    if seen >= DRIFT_MIN_SAMPLE or last:
        schema_lock.check_drift(strategy_run.lock, evidence, strategy_run.summary.schema_key)


def _skip_reason(status: str, batch: Batch, i: int, text_problem: str | None) -> str | None:
    """The error text stored for a skipped item: what is missing and why it waits."""
    text_status = batch.text_status[i]
    if status == policy.MISSING_REQUIRED:
        missing = [m for m in ("video", "audio") if not batch.present[m][i]]
        return f"{' and '.join(missing)} embedding missing"
    if status == policy.MISSING_TEXT_UNAVAILABLE:
        return f"text embedding missing and {text_problem}"
    if status == policy.MISSING_TEXT_PENDING:
        if not text_status:
            return "text embedding missing; no text stage row yet"
        if policy.text_hash_mismatch(batch.text_hash[i : i + 1], batch.rows["source_hash"].iloc[i : i + 1])[
            0
        ]:
            return (
                f"text embedding missing; the text stage's row (status {text_status!r}) is for another "
                f"source_hash ({batch.text_hash[i][:12]}…, this URL hashes to "
                f"{batch.rows.at[i, 'source_hash'][:12]}…): waiting for the text stage to process the current URL"
            )
        return f"text embedding missing; text stage status {text_status!r} is not terminal yet"
    return None


def _publish_batch(
    config, layout: Layout, strategy_run: StrategyRun, batch: Batch, outcome: Outcome, text_problem
) -> None:
    """Write the batch's shard now; keep its manifest and state rows for the commit at the end."""
    rows = batch.rows
    now = datetime.now(UTC).isoformat(timespec="seconds")
    delta = strategy_run.delta
    retry_base = delta["retry_base"].reindex(rows["video_id"]).to_numpy(dtype=np.int64)
    statuses = outcome.statuses
    failed = np.array([int(i) in outcome.errors for i in outcome.index], dtype=bool)
    if failed.any():
        retries, fail_statuses = policy.after_failure(
            retry_base[outcome.index[failed]], config.max_fail_retries
        )
        statuses[failed] = fail_statuses
    else:
        retries = np.array([], dtype=np.int64)
    retry_by_index = dict(zip(outcome.index[failed].tolist(), retries.tolist(), strict=True))

    pointer: dict[int, tuple[str, int]] = {}
    if outcome.vectors is not None:
        fused_ids = rows["video_id"].to_numpy()[outcome.fused_index]
        key = strategy_run.writer.write(
            fused_ids.tolist(), outcome.vectors, rows["captured_at"].to_numpy()[outcome.fused_index].tolist()
        )
        pointer = {int(i): (key, n) for n, i in enumerate(outcome.fused_index)}
        strategy_run.summary.fused_dim = int(outcome.vectors.shape[1])
        strategy_run.manifest_rows.append(
            _manifest_rows(strategy_run, layout, batch, outcome, key, retry_base)
        )
        strategy_run.summary.shards_written.append(key)

    ids = rows["video_id"].tolist()
    captured_ns, hashes = _row_cursors(rows)
    errors_by_id: dict[str, str] = {}  # failures, and why skipped items wait: shown for the samples
    for position, i in enumerate(outcome.index.tolist()):
        status = str(statuses[position])
        video_id = ids[i]
        error = outcome.errors.get(i) or _skip_reason(status, batch, i, text_problem)
        if error:
            errors_by_id[video_id] = error
        artifact, vector_id = (
            (pointer[i][0], f"{pointer[i][0]}#{pointer[i][1]}") if i in pointer else (None, None)
        )
        strategy_run.state_rows.append(
            {
                "video_id": video_id,
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
    strategy_run.summary.upgrade_checked += outcome.upgrade_checked
    strategy_run.summary.record(
        [str(s) for s in statuses], [ids[i] for i in outcome.index], errors_by_id, config.sample_size
    )


def _manifest_rows(
    strategy_run: StrategyRun,
    layout: Layout,
    batch: Batch,
    outcome: Outcome,
    key: str,
    retry_base: np.ndarray,
) -> pa.Table:
    """Manifest rows (DESIGN §2) for the items fused into shard `key`, in shard order."""
    index = outcome.fused_index
    rows = batch.rows.iloc[index]
    ids = rows["video_id"].tolist()
    text_present = batch.present["text"][index]
    text_status = batch.text_status[index]
    table = pa.table(
        {
            "video_id": ids,
            "captured_at": rows["captured_at"].tolist(),
            "source_hash": rows["source_hash"].tolist(),
            "fusion_strategy": [strategy_run.name] * len(ids),
            "fused_dim": np.full(len(ids), outcome.vectors.shape[1], dtype=np.int32),
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
            "fusion_status": np.where(text_present, policy.SUCCESS_FULL, policy.SUCCESS_PLACEHOLDER).tolist(),
            "retry_count_at_write": retry_base[index].astype(np.int32),
        },
        schema=manifest.SCHEMA,
    )
    if strategy_run.name == "projection":
        table = table.append_column(
            "projection_id", pa.array([strategy_run.options.projection.projection_id] * len(ids))
        )
    return table


def _row_cursors(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """`captured_ns` and `hash64` of horizon rows: what the state keeps of the row it processed."""
    return latest.instants(rows["captured_ts"]), metadata.hash64_of_hex(rows["source_hash"])


def _refreshed_rows(horizon: pd.DataFrame, prior: pd.DataFrame, delta: pd.DataFrame) -> list[dict]:
    """State rows of candidates that need no work but whose horizon row is not the one the state
    remembers (a newer capture of the same URL, or a row imported from a seed-era state without the
    cursor columns): the same row with the cursor columns of the current horizon row, so the next scan
    drops the video unhashed."""
    rows = horizon[horizon["video_id"].isin(prior.index) & ~horizon["video_id"].isin(delta["video_id"])]
    if rows.empty:
        return []
    captured_ns, hashes = _row_cursors(rows)
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
        for row in refreshed[list(state.SCHEMA.names)].to_dict("records")
    ]


def _same(old: object, new: object) -> bool:
    """A stored value equals a new one; missing equals only missing."""
    if new is None or pd.isna(old):
        return new is None and pd.isna(old)
    return bool(old == new)


def _changed_state_rows(strategy_run: StrategyRun) -> list[dict]:
    """State rows that differ from what the table already holds (processed_at aside), so a rerun with
    nothing new writes nothing."""
    prior = strategy_run.prior
    fields = ("source_hash", "status", "error", "artifact_key", "retry_count", *state.CURSOR_COLUMNS)
    changed = []
    for row in strategy_run.state_rows:
        if row["video_id"] in prior.index:
            old = prior.loc[row["video_id"]]
            if all(_same(old[f], row[f]) for f in fields):
                continue
        changed.append(row)
    return changed + strategy_run.refreshed


def _commit(
    client, config: FusionConfig, strategy_run: StrategyRun, cursors: dict[str, str], log: logging.Logger
) -> None:
    """Schema lock, then manifest, then state (with the run's cursors): each step only once the one
    before it is durable."""
    name, summary = strategy_run.name, strategy_run.summary
    if strategy_run.manifest_rows:
        if strategy_run.lock is None:
            lock = SchemaLock.build(name, strategy_run.dims, strategy_run.options)
            strategy_run.lock = schema_lock.write_if_absent(client, config.bucket, summary.schema_key, lock)
        summary.fused_dim = strategy_run.lock.fused_dim
        new_rows = pa.concat_tables(strategy_run.manifest_rows)
        summary.manifest_added, summary.manifest_updated = strategy_run.table.commit(new_rows)
    elif strategy_run.lock is not None:
        summary.fused_dim = strategy_run.lock.fused_dim
    changed = _changed_state_rows(strategy_run)
    if changed or strategy_run.store.cursors_move(cursors):
        strategy_run.store.commit(changed, cursors)
    log.info(
        "%s: %d shards, manifest +%d/~%d rows, %d state rows written",
        name,
        len(summary.shards_written),
        summary.manifest_added,
        summary.manifest_updated,
        len(changed),
    )
