"""The public readers of what runs published: `read_manifest` and `read_state`.

They are the stable interface to a strategy's manifest and state, whatever store holds them: the CLI,
the checks, tests and users' scripts read through these two, so the storage can change under them.
"""

from __future__ import annotations

import sqlite3

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from . import manifest, s3io, state
from .config import DEFAULT_ROOT, STRATEGY_NAMES, resolve_bucket
from .errors import ConfigError
from .layout import Layout


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGY_NAMES:
        raise ConfigError(f"unknown strategy {strategy!r}: choose from {', '.join(STRATEGY_NAMES)}")


def read_manifest(
    strategy: str, *, bucket: str | None = None, root: str = DEFAULT_ROOT, client=None
) -> pd.DataFrame:
    """One row per `(video_id, source_hash)` with the manifest columns of DESIGN §2 (plus
    `projection_id` for strategy projection); no rows when nothing has been fused yet."""
    _check_strategy(strategy)
    bucket = resolve_bucket(bucket)
    client = client or s3io.make_client(8)
    table, _ = manifest.read(client, bucket, Layout(root.strip("/")).manifest_key(strategy))
    schema = manifest.schema_for(strategy)
    return manifest.conform(table if table is not None else schema.empty_table(), schema).to_pandas()


def read_state(
    strategy: str, *, bucket: str | None = None, root: str = DEFAULT_ROOT, client=None
) -> pd.DataFrame:
    """One row per `video_id` with the state columns (`video_id, source_hash, processed_at, status, error,
    artifact_key, vector_id, retry_count`), as last published; no rows when there is no state yet.
    Raises StoreError when the published state cannot be read."""
    _check_strategy(strategy)
    bucket = resolve_bucket(bucket)
    client = client or s3io.make_client(8)
    key = Layout(root.strip("/")).state_mirror_key(strategy)
    body = s3io.get_object(client, bucket, key).body
    if body is None:
        return pd.DataFrame(
            {c: pd.Series(dtype="int64" if c == "retry_count" else object) for c in state.STATE_COLUMNS}
        )
    state.check_snapshot(body, f"s3://{bucket}/{key}")
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    connection.deserialize(body)
    engine = sa.create_engine("sqlite://", creator=lambda: connection, poolclass=StaticPool)
    try:
        with engine.connect() as conn:
            present = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(processed_items)")}
            columns = [c for c in state.STATE_COLUMNS if c in present]
            frame = pd.read_sql_query(sa.text(f"SELECT {', '.join(columns)} FROM processed_items"), conn)
    finally:
        engine.dispose()
    for column in state.STATE_COLUMNS:
        if column not in frame.columns:
            frame[column] = 0 if column == "retry_count" else None
    frame["retry_count"] = frame["retry_count"].fillna(0).astype("int64")
    return frame[list(state.STATE_COLUMNS)].sort_values("video_id", ignore_index=True)
