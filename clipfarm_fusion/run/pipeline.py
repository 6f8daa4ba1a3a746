"""run(config, run_date) -> RunSummary: a day's run, the three stages in order.

    plan   (plan.py)    horizon + state + text stage -> the delta, cut into chunks, staged
    fuse   (chunk.py)   per chunk: fetch -> gate -> fuse -> shards; its rows staged
    commit (commit.py)  schema lock -> manifest -> state; staged objects removed

The CLI and the tests run the chunks here, in this process or in `workers` local processes; Dagster
runs the same three stages as ops on its executors (`defs/ops.py`). Nothing but shards and staged
objects is written before the commit, so a crash at any point leaves at worst unreferenced shards and
a rerun converges.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.run import chunk, commit, plan
from clipfarm_fusion.run.summary import RunSummary
from clipfarm_fusion.stores import s3_faults, s3io

ProgressCallback = Callable[[int, int], None]


def run(
    config: FusionConfig,
    run_date: date,
    *,
    client=None,
    log: logging.Logger | None = None,
    on_progress: ProgressCallback | None = None,
    workers: int = 1,
) -> RunSummary:
    """Fuse the day's delta for every configured strategy and publish it.

    Raises ConfigError for bad input and StoreError for a published store that cannot be read (nothing
    written either way), S3UnavailableError when S3 stays unreachable past `config.s3_patience_seconds`
    (nothing recorded against any item). A strategy that must stop (schema drift, or options that differ
    from its lock) stops alone: its shards are withdrawn, it is named in `summary.stopped`, and the
    other strategies publish.
    """
    log = log or logging.getLogger("clipfarm_fusion")
    client = client or s3io.make_client(config.fetch_threads)
    with s3_faults.faults_as_outage("running the day"):
        planned = plan.plan(config, run_date, client, log)
        if workers > 1 and planned.chunks > 1:
            results = _fuse_in_processes(config, planned, workers, log, on_progress)
        else:
            results = chunk.run_all(config, planned, client, log, on_progress)
        return commit.commit(config, planned, results, client, log)


def _fuse_in_processes(
    config: FusionConfig, planned: plan.Plan, workers: int, log: logging.Logger, on_progress
) -> list[chunk.ChunkResult]:
    """The chunks in `workers` spawned processes (not forked: delta-rs's runtime cannot survive a fork)."""
    context = multiprocessing.get_context("spawn")
    results: list[chunk.ChunkResult] = []
    looked_at = 0
    level = logging.getLogger("clipfarm_fusion").getEffectiveLevel()
    with ProcessPoolExecutor(min(workers, planned.chunks), context, _worker_init, (level,)) as pool:
        futures = [pool.submit(_fuse_one, config, planned, index) for index in range(planned.chunks)]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            looked_at += result.looked_at
            log.info(
                "chunk %d done: %d/%d chunks, looked at %d/%d videos",
                result.index,
                len(results),
                planned.chunks,
                looked_at,
                planned.work,
            )
            if on_progress:
                on_progress(looked_at, planned.work)
    return results


def _worker_init(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fuse_one(config: FusionConfig, planned: plan.Plan, index: int) -> chunk.ChunkResult:
    with s3_faults.faults_as_outage(f"fusing chunk {index}"):
        return chunk.fuse_chunk(config, planned, index)
