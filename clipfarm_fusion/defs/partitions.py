"""Daily partitions: one partition per `run_date`, in UTC.

The first partition is 2026-01-01 (before the synthetic demo day, 2026-03-01); set
`CLIPFARM_PARTITIONS_START=YYYY-MM-DD` to start elsewhere. With the default `end_offset=0` the newest
partition is yesterday, the last complete day, which is the one the daily schedule fuses.
"""

from __future__ import annotations

import os
from datetime import date

from dagster import DailyPartitionsDefinition

from clipfarm_fusion.errors import ConfigError

PARTITIONS_START_ENV = "CLIPFARM_PARTITIONS_START"
DEFAULT_PARTITIONS_START = "2026-01-01"


def partitions_start() -> str:
    value = os.environ.get(PARTITIONS_START_ENV, DEFAULT_PARTITIONS_START)
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ConfigError(f"{PARTITIONS_START_ENV}={value!r} is not a date; use YYYY-MM-DD") from None


daily_partitions = DailyPartitionsDefinition(start_date=partitions_start(), timezone="UTC")


def run_date(partition_key: str) -> date:
    """The partition key is the run_date the pipeline is pinned to (shards land in `date=<key>`)."""
    return date.fromisoformat(partition_key)
