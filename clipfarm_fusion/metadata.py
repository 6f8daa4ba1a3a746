"""The metadata horizon: read CSV or Parquet (local or s3://), find ids and URLs, hash, as-of filter, dedupe.

Real horizon files carry many more columns, quoted multi-line text and emoji, so they go through a real
parser (pandas' C CSV reader, pyarrow for Parquet), reading only the columns we use.
"""

from __future__ import annotations

import hashlib
import io
import re
from datetime import UTC, date, datetime, time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError

URL_COLUMNS: tuple[str, ...] = ("video_url", "url", "youtube_url")
_ID_FROM_URL = re.compile(r"(?:youtu\.be/|/shorts/|/embed/|/live/|[?&]v=)([A-Za-z0-9_-]{6,64})")
_WANTED = {"video_id", "captured_at", *URL_COLUMNS}


def video_id_from_url(url: str) -> str | None:
    match = _ID_FROM_URL.search(url or "")
    return match.group(1) if match else None


def parse_table(body: bytes, location: str) -> pd.DataFrame:
    """Bytes of a CSV or Parquet file -> the columns we use, all as strings."""
    try:
        if location.lower().endswith((".parquet", ".pq")) or body[:4] == b"PAR1":
            table = pq.read_table(
                pa.BufferReader(body), use_threads=False, pre_buffer=False
            )  # see manifest.read
            present = [c for c in table.column_names if c in _WANTED]
            frame = table.select(present).to_pandas()
        else:
            frame = pd.read_csv(
                io.BytesIO(body),
                usecols=lambda c: c in _WANTED,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8",
            )
    except UnicodeDecodeError as exc:
        raise ConfigError(f"metadata {location}: not UTF-8 ({exc}); re-export it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise ConfigError(f"metadata {location}: file is empty; check the upstream export") from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise ConfigError(f"metadata {location}: cannot parse ({exc})") from None
    return frame.astype("string").fillna("")


def prepare(frame: pd.DataFrame, location: str, include_captured_at_in_hash: bool) -> pd.DataFrame:
    """Raw columns -> `video_id, url, captured_at, captured_ts, source_hash`, one row per input row.

    `url` is what the hash is made of: the `url` column when present, else the first URL column.
    """
    url_columns = [c for c in URL_COLUMNS if c in frame.columns]
    if "video_id" not in frame.columns and not url_columns:
        raise ConfigError(
            f"metadata {location}: needs a video_id column or one of {', '.join(URL_COLUMNS)}; "
            f"found {', '.join(frame.columns) or 'no columns'}"
        )
    if not url_columns:
        raise ConfigError(f"metadata {location}: needs a URL column ({', '.join(URL_COLUMNS)}) to hash")
    hash_column = "url" if "url" in url_columns else url_columns[0]
    urls = frame[hash_column].fillna("")
    if "video_id" in frame.columns:
        ids = frame["video_id"].fillna("").str.strip()
    else:
        ids = pd.Series([""] * len(frame), index=frame.index, dtype="string")
    for column in url_columns:
        parsed = frame[column].map(video_id_from_url, na_action="ignore").astype("string").fillna("")
        ids = ids.where(ids != "", parsed)
    captured_at = (
        frame["captured_at"].fillna("").str.strip()
        if "captured_at" in frame.columns
        else urls.map(lambda _: "")
    )
    captured_ts = pd.to_datetime(
        captured_at.where(captured_at != ""), utc=True, errors="coerce", format="ISO8601"
    )
    keys = urls + "|" + captured_at if include_captured_at_in_hash else urls
    hashes = [hashlib.sha256(key.encode("utf-8")).hexdigest() for key in keys]
    result = pd.DataFrame(
        {
            "video_id": ids.astype(str).to_numpy(),
            "url": urls.astype(str).to_numpy(),
            "captured_at": captured_at.astype(str).to_numpy(),
            "captured_ts": captured_ts.array,  # the array keeps UTC even when every value is NaT
            "source_hash": hashes,
        }
    )
    return result[result["video_id"] != ""].reset_index(drop=True)


def as_of(frame: pd.DataFrame, run_date: date) -> pd.DataFrame:
    """Rows captured on or before the end of `run_date` (UTC); rows without captured_at count."""
    cutoff = pd.Timestamp(datetime.combine(run_date, time.max, tzinfo=UTC))
    keep = frame["captured_ts"].isna() | (frame["captured_ts"] <= cutoff)
    return frame[keep]


def dedupe_latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per video_id: the latest captured_at (rows without one lose to any dated row)."""
    ordered = frame.sort_values(["video_id", "captured_ts"], na_position="first", kind="stable")
    return ordered.drop_duplicates("video_id", keep="last").reset_index(drop=True)


def load_horizon(
    body: bytes | None, location: str, run_date: date, include_captured_at_in_hash: bool
) -> pd.DataFrame:
    """The run's candidate videos: parsed, as-of `run_date`, deduplicated, sorted by video_id."""
    if body is None:
        raise ConfigError(f"metadata {location} not found; pass --metadata PATH|s3://BUCKET/KEY")
    if not body.strip():
        raise ConfigError(f"metadata {location}: file is empty; check the upstream export")
    frame = prepare(parse_table(body, location), location, include_captured_at_in_hash)
    return dedupe_latest(as_of(frame, run_date))
