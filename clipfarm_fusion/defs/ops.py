"""The ops of a day's run, one per stage: `plan` -> `fan_out` -> `fuse_chunk` x N -> `commit`.

Each op is a thin wrapper over its stage module (`plan.plan`, `chunk.fuse_chunk`, `commit.commit`), so
the graph in `assets.py` runs exactly what `pipeline.run()` runs, with Dagster's executor in place of the
CLI's process pool. What passes between the steps is the small descriptors (a `Plan`, one `ChunkResult`
per chunk, chunk indices), never rows or vectors: those are staged in the bucket by the stages
themselves, so any IO manager can carry the step outputs and any process (a spawned child, a Celery
worker, a pod) can run any step.

Every op names the strategies the run selected (`context.selected_asset_keys`), so they all build the
same `FusionConfig`. Only `commit` is in the `clipfarm_fusion` pool: it is the single writer of the
manifests and state tables, while the chunks of a day fuse side by side.

No `from __future__ import annotations` here: Dagster reads the ops' `context` annotations at import.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from dagster import (
    AssetCheckResult,
    DynamicOut,
    DynamicOutput,
    Failure,
    In,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    op,
)

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.defs import checks
from clipfarm_fusion.defs.materialization import strategy_metadata
from clipfarm_fusion.defs.partitions import run_date
from clipfarm_fusion.defs.resources import ASSET_STRATEGIES, FusionResource
from clipfarm_fusion.defs.upstream import UPSTREAM_SPECS
from clipfarm_fusion.errors import ClipfarmError, ConcurrentWriteError, S3UnavailableError
from clipfarm_fusion.run import chunk, commit, plan
from clipfarm_fusion.stores import s3_faults

FUSION_POOL = "clipfarm_fusion"
# A chunk step that failed on something transient, or whose process died, runs again alone: a chunk
# depends only on the plan, and a retry's staged rows replace the failed attempt's.
CHUNK_RETRY = RetryPolicy(max_retries=2, delay=1.0)
UPSTREAM_INPUTS = {spec.key.to_python_identifier(): spec.key for spec in UPSTREAM_SPECS}
# Dagster routes a check's result to the op output named after its spec.
CHECK_OUTPUTS: tuple[str, ...] = tuple(
    checks.fail_rate_spec(name).get_python_identifier() for name in ASSET_STRATEGIES
)


def previous_day_input(strategy: str) -> str:
    """The graph input that stands for a strategy's own previous day (its self-dependency)."""
    return f"{strategy}_previous_day"


RECHECK_TEXT_TAG = "clipfarm/recheck_text"  # "true": a full text recheck (the CLI's --recheck-text)


def selected_config(context: OpExecutionContext, fusion: FusionResource) -> FusionConfig:
    """The run's config over the strategies the run selected, the same in every op of the run. A run
    tagged `clipfarm/recheck_text=true` (the job `text_recheck`, or any run from the launchpad) also
    rechecks every placeholder whose text file exists."""
    strategies = tuple(name for name in ASSET_STRATEGIES if name in _selected_names(context))
    config = fusion.fusion_config(strategies)
    if context.run.tags.get(RECHECK_TEXT_TAG, "").lower() == "true":
        config = replace(config, recheck_text_files=True)
    return config


def _selected_names(context: OpExecutionContext) -> set[str]:
    return {key.to_user_string() for key in context.selected_asset_keys}


@contextmanager
def stage_failures(what: str) -> Iterator[None]:
    """Errors of our own hierarchy fail the step with their message, which says what to do next; an S3
    fault past botocore's retries and our patience counts as an outage (S3UnavailableError)."""
    try:
        with s3_faults.faults_as_outage(what):
            yield
    except ClipfarmError as exc:
        # Another writer finishing or S3 coming back is worth a retry; bad config, drift and broken stores need a person.
        transient = isinstance(exc, ConcurrentWriteError | S3UnavailableError)
        raise Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=transient) from exc


def stopped_failure(stopped: dict[str, str], conflicts: dict[str, str] | None = None) -> Failure:
    """The step fails after the other strategies have materialised: a strategy stopped on drift needs
    a person (`clipfarm-fusion migrate-schema`), one that yielded to a concurrent run needs the day
    run again (a new run plans afresh), so no step retry either way."""
    conflicts = conflicts or {}
    lines = [f"{name}: {message}" for name, message in {**stopped, **conflicts}.items()]
    return Failure(
        description="Stopped (nothing of theirs published; the other strategies did):\n" + "\n".join(lines),
        metadata={
            **{f"stopped/{name}": MetadataValue.text(message) for name, message in stopped.items()},
            **{f"conflict/{name}": MetadataValue.text(message) for name, message in conflicts.items()},
        },
        allow_retries=False,
    )


@op(
    name="plan",
    # Nothing inputs: the previous day of each strategy and the upstream inputs are dependencies to
    # wait for, not values to load.
    ins={
        **{previous_day_input(name): In(Nothing) for name in ASSET_STRATEGIES},
        **{name: In(Nothing) for name in UPSTREAM_INPUTS},
    },
)
def plan_day(context: OpExecutionContext, fusion: FusionResource) -> plan.Plan:
    """Read the partition's horizon, state and text stage, decide the delta and stage its chunks; only
    the selected strategies are planned."""
    with stage_failures(f"planning {context.partition_key}"):
        return plan.plan(
            selected_config(context, fusion), run_date(context.partition_key), fusion.client(), context.log
        )


@op(name="fan_out", out=DynamicOut(int))
def fan_out(planned: plan.Plan) -> Iterator[DynamicOutput]:
    """One dynamic output per chunk of the plan, so each chunk is a step of its own (`chunk_0003`)."""
    for index in range(planned.chunks):
        yield DynamicOutput(index, mapping_key=f"chunk_{index:04d}")


@op(name="fuse_chunk", retry_policy=CHUNK_RETRY)
def fuse_one_chunk(
    context: OpExecutionContext, fusion: FusionResource, planned: plan.Plan, index: int
) -> chunk.ChunkResult:
    """Fuse one chunk of the plan and stage its rows; nothing is published before `commit`."""
    with stage_failures(f"fusing chunk {index} of {context.partition_key}"):
        return chunk.fuse_chunk(
            selected_config(context, fusion), planned, index, fusion.client(), context.log
        )


@op(
    name="commit",
    out={
        **{name: Out(Nothing, is_required=False) for name in ASSET_STRATEGIES},
        **{output: Out(Nothing, is_required=False) for output in CHECK_OUTPUTS},
    },
    pool=FUSION_POOL,
)
def commit_day(
    context: OpExecutionContext, fusion: FusionResource, planned: plan.Plan, results: list[chunk.ChunkResult]
) -> Iterator[Output | AssetCheckResult]:
    """Publish the day: one materialization (and fail-rate check result) per strategy that published,
    then fail naming the strategies that stopped."""
    with stage_failures(f"committing {context.partition_key}"):
        summary = commit.commit(
            selected_config(context, fusion), planned, results, fusion.client(), context.log
        )
    context.log.info("run summary\n%s", summary.to_table())
    for name, strategy in summary.strategies.items():
        yield Output(None, output_name=name, metadata=strategy_metadata(summary, name))
        if checks.fail_rate_key(name) in context.selected_asset_check_keys:
            yield checks.fail_rate_result(name, strategy, fusion.fail_rate_threshold, context.partition_key)
    if summary.stopped or summary.conflicts:
        raise stopped_failure(summary.stopped, summary.conflicts)
