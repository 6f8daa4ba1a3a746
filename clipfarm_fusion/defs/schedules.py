"""The jobs' schedules.

- `fuse_daily_schedule`: at 02:00 UTC, fuse yesterday's partition with every strategy. The two hours of
  slack let the upstream embedding and text stages finish the day before it is read.
- `verify_published_weekly`: Sundays 04:00 UTC, verify every shard and pointer of every strategy.
- `gc_orphan_shards_weekly`: Sundays 05:00 UTC, sweep orphan shards older than a day.
- `text_recheck_weekly`: Sundays 06:00 UTC, yesterday's partition again with a full text recheck: every
  placeholder whose text file exists is upgraded, whatever the text stage's rows say (one LIST of the
  text prefix). For text the stage never announced; stopped by default.
- `detect_changes_weekly`: Saturdays 04:00 UTC, compare every strategy's recorded input ETags with the
  bucket and request the changed videos again; stopped by default (it LISTs every embedding).
- `maintain_tables_daily`: 03:30 UTC, compact and vacuum the lake tables. RUNNING by default: table
  upkeep is not a chore anyone should have to remember.

The others are stopped until turned on in the UI (the daemon runs them).
"""

from __future__ import annotations

from datetime import timedelta

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    build_schedule_from_partitioned_job,
    define_asset_job,
    schedule,
)

from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.jobs import (
    detect_changes_job,
    gc_orphan_shards_job,
    maintain_tables_job,
    verify_published_job,
)
from clipfarm_fusion.defs.ops import RECHECK_TEXT_TAG

fuse_daily_job = define_asset_job(
    "fuse_daily",
    selection=AssetSelection.assets(fuse_embeddings),
    description="Fuse one day (the partition) with all three strategies, then run the output checks.",
)
text_recheck_job = define_asset_job(
    "text_recheck",
    selection=AssetSelection.assets(fuse_embeddings),
    tags={RECHECK_TEXT_TAG: "true"},
    description="Fuse one day like fuse_daily, and also upgrade every placeholder whose text file exists "
    "whatever the text stage says (one LIST of the text prefix, a GET per such placeholder).",
)
fuse_daily_schedule = build_schedule_from_partitioned_job(
    fuse_daily_job, name="fuse_daily_schedule", hour_of_day=2
)
verify_published_schedule = ScheduleDefinition(
    name="verify_published_weekly",
    job=verify_published_job,
    cron_schedule="0 4 * * 0",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every Sunday at 04:00 UTC: verify every shard and pointer of every strategy.",
)
gc_orphan_shards_schedule = ScheduleDefinition(
    name="gc_orphan_shards_weekly",
    job=gc_orphan_shards_job,
    cron_schedule="0 5 * * 0",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every Sunday at 05:00 UTC: delete orphan shards older than the grace period (1d).",
)
detect_changes_schedule = ScheduleDefinition(
    name="detect_changes_weekly",
    job=detect_changes_job,
    cron_schedule="0 4 * * 6",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every Saturday at 04:00 UTC: find videos whose inputs changed under the same key and "
    "request them again; the next daily run fuses them.",
)
maintain_tables_schedule = ScheduleDefinition(
    name="maintain_tables_daily",
    job=maintain_tables_job,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30 UTC (after the fuse): compact, checkpoint and vacuum the lake tables.",
)


@schedule(
    name="text_recheck_weekly",
    job=text_recheck_job,
    cron_schedule="0 6 * * 0",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every Sunday at 06:00 UTC: yesterday's partition with a full text recheck.",
)
def text_recheck_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    """Yesterday's partition, like the daily fuse; the run key makes a tick idempotent."""
    day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
    return RunRequest(run_key=f"text_recheck-{day}", partition_key=day)
