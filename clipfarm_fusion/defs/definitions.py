"""`defs`: everything Dagster loads (`[tool.dagster] module_name` points here).

The upstream specs are plain `AssetSpec`s, i.e. external assets: the lineage shows them, nothing here
materialises them. Every job runs on the executor `CLIPFARM_EXECUTOR` names (`executors.py`). Besides the daily fuse, three maintenance jobs: `maintain_tables` (daily, running
by default: compaction and vacuum of the lake tables), `verify_published` and `gc_orphan_shards`
(weekly schedules, stopped by default), and `text_recheck`: the daily fuse plus a full text recheck
(weekly, stopped by default). For re-fusion: `detect_changes` (weekly, stopped by default) and
`refuse`, which requests what the strategy's next materialisation fuses again.
"""

from __future__ import annotations

from dagster import Definitions

from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.checks import published_outputs
from clipfarm_fusion.defs.executors import executor_from_env
from clipfarm_fusion.defs.jobs import (
    detect_changes_job,
    gc_orphan_shards_job,
    maintain_tables_job,
    refuse_job,
    verify_published_job,
)
from clipfarm_fusion.defs.resources import FusionResource
from clipfarm_fusion.defs.schedules import (
    detect_changes_schedule,
    fuse_daily_job,
    fuse_daily_schedule,
    gc_orphan_shards_schedule,
    maintain_tables_schedule,
    text_recheck_job,
    text_recheck_schedule,
    verify_published_schedule,
)
from clipfarm_fusion.defs.upstream import UPSTREAM_SPECS

defs = Definitions(
    assets=[*UPSTREAM_SPECS, fuse_embeddings],
    asset_checks=[published_outputs],
    jobs=[
        fuse_daily_job,
        text_recheck_job,
        verify_published_job,
        gc_orphan_shards_job,
        maintain_tables_job,
        detect_changes_job,
        refuse_job,
    ],
    schedules=[
        fuse_daily_schedule,
        verify_published_schedule,
        gc_orphan_shards_schedule,
        maintain_tables_schedule,
        text_recheck_schedule,
        detect_changes_schedule,
    ],
    resources={"fusion": FusionResource()},  # the bucket: CLIPFARM_BUCKET, read when a run starts
    executor=executor_from_env(),
)
