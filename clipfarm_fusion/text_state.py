"""The text stage's snapshot (`processed_items`), opened read-only: what the gating policy needs to know.

The text stage owns this file; we never write to it. An S3 copy is read into an in-memory SQLite
database (no temp files); a local file is opened with `mode=ro`. Missing, unreadable or locked means
"unavailable", which the policy turns into `missing_text_state_unavailable` for the items that need it.
"""

from __future__ import annotations

import logging
import sqlite3

import pandas as pd
import sqlalchemy as sa

from . import s3io, sqlite_bytes

log = logging.getLogger(__name__)
TEXT_STATE_COLUMNS = ("status", "source_hash", "error")


def _engine_for_path(path: str) -> sa.Engine:
    return sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"timeout": 2})


def read_rows(engine: sa.Engine) -> pd.DataFrame:
    """`processed_items` as a frame indexed by video_id with status, source_hash (None in old files), error."""
    with engine.connect() as connection:
        present = {row[1] for row in connection.exec_driver_sql("PRAGMA table_info(processed_items)")}
        if "video_id" not in present or "status" not in present:
            raise sa.exc.OperationalError("processed_items", {}, Exception("no processed_items table"))
        columns = ["video_id", *[c for c in TEXT_STATE_COLUMNS if c in present]]
        frame = pd.read_sql_query(sa.text(f"SELECT {', '.join(columns)} FROM processed_items"), connection)
    for column in TEXT_STATE_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    return frame.astype({"video_id": str}).set_index("video_id")


def load(client, location: str) -> tuple[pd.DataFrame | None, str | None]:
    """(rows, None) when readable, else (None, why) so the summary can say why text gating was blind."""
    try:
        if location.startswith("s3://"):
            body = s3io.read_uri(client, location)
            if body is None:
                return None, f"text state {location} not found"
            if not body.startswith(sqlite_bytes.HEADER):
                why = f"text state {location} unavailable: not a SQLite file ({len(body)} bytes)"
                log.warning(why)
                return None, why
            engine = sqlite_bytes.engine(body)
        else:
            engine = _engine_for_path(location)
        try:
            return read_rows(engine), None
        finally:
            engine.dispose()
    except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
        why = f"text state {location} unavailable: {str(exc).splitlines()[0]}"
        log.warning(why)
        return None, why
