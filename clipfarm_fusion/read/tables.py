"""The public readers of what runs published: `read_manifest`, `read_state` and `read_failures`.

They are the stable interface to a strategy's manifest and state, whatever store holds them: the CLI,
the checks, tests and users' scripts read through these, so the storage can change under them.
"""

from __future__ import annotations

from datetime import date

import pandas as pd
import pyarrow as pa

from clipfarm_fusion.config import DEFAULT_ROOT, STRATEGY_NAMES, resolve_bucket
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import failures
from clipfarm_fusion.stores import manifest, s3io, state
from clipfarm_fusion.stores.state_schema import STATE_COLUMNS, WRITER_COLUMN


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGY_NAMES:
        raise ConfigError(f"unknown strategy {strategy!r}: choose from {', '.join(STRATEGY_NAMES)}")


def manifest_table(client, bucket: str, root: str, strategy: str) -> pa.Table | None:
    """The strategy's manifest with its columns in `manifest.schema_for(strategy)` (null where an older
    manifest lacks one), or None when nothing has been published."""
    _check_strategy(strategy)
    return manifest.read(client, bucket, Layout(root.strip("/")), strategy)


def read_manifest(
    strategy: str, *, bucket: str | None = None, root: str = DEFAULT_ROOT, client=None
) -> pd.DataFrame:
    """One row per `(video_id, source_hash)` with the manifest columns of the manifest columns (docs/contract.md) (plus
    `projection_id` for strategy projection); no rows when nothing has been fused yet."""
    table = manifest_table(client or s3io.make_client(8), resolve_bucket(bucket), root, strategy)
    return (manifest.schema_for(strategy).empty_table() if table is None else table).to_pandas()


def read_state(
    strategy: str, *, bucket: str | None = None, root: str = DEFAULT_ROOT, client=None
) -> pd.DataFrame:
    """One row per `video_id` with the state columns (`video_id, source_hash, processed_at, status, error,
    artifact_key, vector_id, retry_count`), as last published; no rows when there is no state yet.
    Raises StoreError when the published state cannot be read."""
    _check_strategy(strategy)
    client = client or s3io.make_client(8)
    return state.read_rows(client, resolve_bucket(bucket), Layout(root.strip("/")), strategy)


def read_failures(
    strategy: str,
    run_date: date | str | None = None,
    *,
    bucket: str | None = None,
    root: str = DEFAULT_ROOT,
    client=None,
) -> pd.DataFrame:
    """Every item the state holds in a failed or waiting status (`fail`, `fail_terminal`,
    `missing_required_modality`, `missing_text_state_unavailable`, `missing_text_pending`), one row per
    video_id with the error of its last attempt: `video_id, status, error, retry_count, run_date,
    processed_at` (`run_date`: the day whose run wrote the row). With `run_date`, that day's items: while
    it is the newest day fused, exactly those its summary counts under these statuses (`read.failures`
    says why). Raises StoreError when the published state cannot be read."""
    _check_strategy(strategy)
    day = None if run_date is None else date.fromisoformat(str(run_date)).isoformat()
    client = client or s3io.make_client(8)
    columns = (*STATE_COLUMNS, WRITER_COLUMN)
    rows = state.read_rows(client, resolve_bucket(bucket), Layout(root.strip("/")), strategy, columns)
    return failures.failed_or_waiting(rows, day)
