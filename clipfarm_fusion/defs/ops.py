"""The ops of a day's run, one per stage: `plan` -> `fan_out` -> `fuse_chunk` x N -> `commit`.

Each op is a thin wrapper over its stage module (`plan.plan`, `chunk.fuse_chunk`, `commit.commit`), so
the graph in `assets.py` runs exactly what `pipeline.run()` runs, with Dagster's executor in place of the
CLI's process pool. What passes between the steps is the small descriptors (a `Plan`, one `ChunkResult`
per chunk, chunk indices), never rows or vectors: those are staged in the bucket by the stages
themselves. The descriptors go to the bucket too, as JSON (the `step_outputs` IO manager,
`step_outputs.py`), so any process (a spawned child, a Celery worker on another machine, a pod) can run
any step with no filesystem in common.

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
from clipfarm_fusion.defs.step_outputs import STEP_OUTPUTS
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


def stopped_failure(
    stopped: dict[str, str], conflicts: dict[str, str] | None = None, blocked: dict[str, str] | None = None
) -> Failure:
    """The step fails after the other strategies have materialised: a strategy stopped on drift needs
    a person (`clipfarm-fusion migrate-schema`), one that yielded to a concurrent run needs the day
    run again (a new run plans afresh), one whose blocking checks failed (`blocked`) was published but
    is not materialised, so nothing that waits for that day runs until a person has looked and the day
    runs again. No step retry in any case."""
    conflicts, blocked = conflicts or {}, blocked or {}
    sections = []
    if stopped or conflicts:
        lines = [f"{name}: {message}" for name, message in {**stopped, **conflicts}.items()]
        sections.append(
            "Stopped (nothing of theirs published; the other strategies did):\n" + "\n".join(lines)
        )
    if blocked:
        sections.append(
            "Published but not materialised, a blocking check failed (the next day does not start):\n"
            + "\n".join(blocked.values())
        )
    return Failure(
        description="\n".join(sections),
        metadata={
            **{f"stopped/{name}": MetadataValue.text(message) for name, message in stopped.items()},
            **{f"conflict/{name}": MetadataValue.text(message) for name, message in conflicts.items()},
            **{f"blocked/{name}": MetadataValue.text(message) for name, message in blocked.items()},
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
    out=Out(io_manager_key=STEP_OUTPUTS),
)
def plan_day(context: OpExecutionContext, fusion: FusionResource) -> plan.Plan:
    """Read the partition's horizon, state and text stage, decide the delta and stage its chunks; only
    the selected strategies are planned."""
    with stage_failures(f"planning {context.partition_key}"):
        return plan.plan(
            selected_config(context, fusion), run_date(context.partition_key), fusion.client(), context.log
        )


@op(name="fan_out", out=DynamicOut(int, io_manager_key=STEP_OUTPUTS))
def fan_out(planned: plan.Plan) -> Iterator[DynamicOutput]:
    """One dynamic output per chunk of the plan, so each chunk is a step of its own (`chunk_0003`)."""
    for index in range(planned.chunks):
        yield DynamicOutput(index, mapping_key=f"chunk_{index:04d}")


@op(name="fuse_chunk", retry_policy=CHUNK_RETRY, out=Out(io_manager_key=STEP_OUTPUTS))
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
    """Publish the day, run the blocking output checks on what it published, then yield one
    materialization per strategy that published and passed them (and one fail-rate check result per
    strategy that published); then fail naming the strategies that stopped or failed a check.

    The checks come before the materializations because a backfill starts day N+1 as soon as day N is
    materialised: a failed check in the `published_outputs` step, after the materialization, could not
    stop it. That step still runs them once the day is materialised (and on its own from the UI); when
    this step fails it is skipped, so this step records what the checks found in its place."""
    with stage_failures(f"committing {context.partition_key}"):
        summary = commit.commit(
            selected_config(context, fusion), planned, results, fusion.client(), context.log
        )
    context.log.info("run summary\n%s", summary.to_table())
    with stage_failures(f"checking {context.partition_key}"):
        gated = checks.gate(fusion, summary.strategies, context.partition_key)
    blocked = {
        name: "\n".join(result.description for result in found if not result.passed)
        for name, found in gated.items()
        if not all(result.passed for result in found)
    }
    if blocked or summary.stopped or summary.conflicts:
        for found in gated.values():
            for result in found:
                context.log_event(checks.as_evaluation(result))
    for name, strategy in summary.strategies.items():
        if name not in blocked:
            yield Output(None, output_name=name, metadata=strategy_metadata(summary, name))
        if checks.fail_rate_key(name) in context.selected_asset_check_keys:
            yield checks.fail_rate_result(name, strategy, fusion.fail_rate_threshold, context.partition_key)
    if blocked or summary.stopped or summary.conflicts:
        raise stopped_failure(summary.stopped, summary.conflicts, blocked)
