"""The daily job and its schedule: at 02:00 UTC, fuse yesterday's partition with every strategy.

The two hours of slack let the upstream embedding and text stages finish the day before it is read.
"""

from __future__ import annotations

from dagster import AssetSelection, build_schedule_from_partitioned_job, define_asset_job

from .assets import fuse_embeddings

fuse_daily_job = define_asset_job(
    "fuse_daily",
    selection=AssetSelection.assets(fuse_embeddings),
    description="Fuse one day (the partition) with all three strategies, then run the output checks.",
)
fuse_daily_schedule = build_schedule_from_partitioned_job(
    fuse_daily_job, name="fuse_daily_schedule", hour_of_day=2
)
