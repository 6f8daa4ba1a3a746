"""`defs`: everything Dagster loads (`[tool.dagster] module_name` points here)."""

from __future__ import annotations

from dagster import Definitions, EnvVar

from .assets import fuse_embeddings
from .checks import published_outputs
from .resources import FusionResource
from .schedules import fuse_daily_job, fuse_daily_schedule

defs = Definitions(
    assets=[fuse_embeddings],
    asset_checks=[published_outputs],
    jobs=[fuse_daily_job],
    schedules=[fuse_daily_schedule],
    resources={"fusion": FusionResource(bucket=EnvVar("CLIPFARM_BUCKET"))},
)
