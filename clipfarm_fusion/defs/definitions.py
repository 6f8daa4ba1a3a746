"""`defs`: everything Dagster loads (`[tool.dagster] module_name` points here).

The upstream specs are plain `AssetSpec`s, i.e. external assets: the lineage shows them, nothing here
materialises them. Besides the daily fuse, two maintenance jobs (`verify_published`, `gc_orphan_shards`)
with weekly schedules, stopped by default.
"""

from __future__ import annotations

from dagster import Definitions, EnvVar

from .assets import UPSTREAM_SPECS, fuse_embeddings
from .checks import published_outputs
from .jobs import gc_orphan_shards_job, verify_published_job
from .resources import FusionResource
from .schedules import (
    fuse_daily_job,
    fuse_daily_schedule,
    gc_orphan_shards_schedule,
    verify_published_schedule,
)

defs = Definitions(
    assets=[*UPSTREAM_SPECS, fuse_embeddings],
    asset_checks=[published_outputs],
    jobs=[fuse_daily_job, verify_published_job, gc_orphan_shards_job],
    schedules=[fuse_daily_schedule, verify_published_schedule, gc_orphan_shards_schedule],
    resources={"fusion": FusionResource(bucket=EnvVar("CLIPFARM_BUCKET"))},
)
