"""The metadata horizon: read CSV or Parquet (local or s3://), find ids and URLs, hash, as-of filter, dedupe.

Real horizon files carry many more columns, quoted multi-line text and emoji, so they go through a real
parser (pandas' C CSV reader, pyarrow for Parquet), reading only the columns we use.

The rules below are the text stage's; `source_hash` must equal its hash byte for byte.

- Column names are matched CASE-INSENSITIVELY (`Video_ID`, `VIDEO_URL`, `Captured_At` all work); when
  two columns differ only in case, the first in the file wins.
- The URL column is, in this order: `video_url`, `url`, `youtube_url`, else the first column whose
  name contains "url" but not "thumb" (so `page_url` can be chosen, `thumbnail_url` never is).
- The URL is stripped (`str.strip()`); the output `url` column is the stripped URL.
- `source_hash = sha256(url)`, or with `include_captured_at_in_hash` `sha256(url + "|" + captured_at)`,
  hex, UTF-8, where captured_at is exactly as written in the file (NOT stripped: surrounding spaces
  are part of the hash). The output `captured_at` column is also as written; `captured_ts` is
  parsed from it (whitespace ignored) by `latest.parse_utc`: UTC, ISO 8601, NaT when empty or
  unparseable.
- The video id: a `video_id` column's value (stripped) when present and non-empty; otherwise the id
  parsed by `video_id_from_url` from the stripped URL of the same URL column the hash uses. A row
  with neither is dropped.
- One row per video: the latest by `latest.latest_index` (captured_ts, undated rows oldest; at the
  same instant the larger source_hash, then the larger captured_at spelling wins), so the pick never
  depends on the order of the rows in the file.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, time
from typing import NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import latest
from .errors import ConfigError

URL_COLUMNS: tuple[str, ...] = ("video_url", "url", "youtube_url")
ID_COLUMN = "video_id"
CAPTURED_COLUMN = "captured_at"
_ID_FROM_URL = re.compile(r"(?:youtu\.be/|/shorts/|/embed/|/live/|[?&]v=)([A-Za-z0-9_-]{6,64})")


def video_id_from_url(url: str) -> str | None:
    match = _ID_FROM_URL.search((url or "").strip())
    return match.group(1) if match else None


class Columns(NamedTuple):
    """The file's own names of the columns we use (None where absent)."""

    video_id: str | None
    captured_at: str | None
    url: str | None


def url_column(names: Iterable[str]) -> str | None:
    """The URL column by the text stage's rule: `video_url`, `url`, `youtube_url` (any case), else the
    first column whose name contains "url" but not "thumb" (any case); None when there is none."""
    names = [str(n) for n in names]
    for wanted in URL_COLUMNS:
        for name in names:
            if name.lower() == wanted:
                return name
    for name in names:
        lowered = name.lower()
        if "url" in lowered and "thumb" not in lowered:
            return name
    return None


def resolve_columns(names: Iterable[str]) -> Columns:
    names = [str(n) for n in names]

    def named(wanted: str) -> str | None:
        return next((n for n in names if n.lower() == wanted), None)

    return Columns(named(ID_COLUMN), named(CAPTURED_COLUMN), url_column(names))


def _require(columns: Columns, names: Iterable[str], location: str) -> None:
    if columns.video_id is None and columns.url is None:
        raise ConfigError(
            f"metadata {location}: needs a video_id column or a URL column ({', '.join(URL_COLUMNS)}, "
            f"or any column named *url* but not *thumb*); found {', '.join(map(str, names)) or 'no columns'}"
        )
    if columns.url is None:
        raise ConfigError(
            f"metadata {location}: needs a URL column ({', '.join(URL_COLUMNS)}, or any column named *url* "
            "but not *thumb*) to hash"
        )


def parse_table(body: bytes, location: str) -> pd.DataFrame:
    """Bytes of a CSV or Parquet file -> only the columns we use (see `resolve_columns`), as strings.

    The header is read first, so only those columns are parsed. ConfigError when they are not there.
    """
    try:
        if location.lower().endswith((".parquet", ".pq")) or body[:4] == b"PAR1":
            # see manifest.read for why Arrow's thread pool is not used
            parquet = pq.ParquetFile(pa.BufferReader(body), pre_buffer=False)
            names = parquet.schema_arrow.names
            columns = resolve_columns(names)
            _require(columns, names, location)
            positions = sorted({names.index(c) for c in columns if c is not None})
            frame = parquet.read(columns=[names[i] for i in positions], use_threads=False).to_pandas()
        else:
            header = pd.read_csv(io.BytesIO(body), nrows=0, dtype=str, encoding="utf-8")
            names = list(header.columns)
            columns = resolve_columns(names)
            _require(columns, names, location)
            positions = sorted({names.index(c) for c in columns if c is not None})
            frame = pd.read_csv(
                io.BytesIO(body),
                usecols=positions,
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


def _sha256_hex(keys: pd.Series) -> list[str]:
    sha256 = hashlib.sha256
    return [sha256(key.encode("utf-8")).hexdigest() for key in keys.tolist()]


def prepare(frame: pd.DataFrame, location: str, include_captured_at_in_hash: bool) -> pd.DataFrame:
    """Raw columns -> `video_id, url, captured_at, captured_ts, source_hash`, one row per input row
    that has a video id (the rules are in the module docstring)."""
    columns = resolve_columns(frame.columns)
    _require(columns, frame.columns, location)
    empty = pd.Series([""] * len(frame), index=frame.index, dtype="string")

    def column(name: str | None) -> pd.Series:
        return empty if name is None else frame[name].astype("string").fillna("")

    urls = column(columns.url).str.strip()
    ids = column(columns.video_id).str.strip()
    need_parse = ids == ""
    if need_parse.any():
        parsed = urls[need_parse].map(video_id_from_url).astype("string").fillna("")
        ids = ids.where(~need_parse, parsed)
    captured_at = column(columns.captured_at)  # as written: the hash must see the same bytes
    keys = urls + "|" + captured_at if include_captured_at_in_hash else urls
    result = pd.DataFrame(
        {
            "video_id": ids.astype(str).to_numpy(),
            "url": urls.astype(str).to_numpy(),
            "captured_at": captured_at.astype(str).to_numpy(),
            "captured_ts": latest.parse_utc(captured_at).array,  # keeps UTC even when every value is NaT
            "source_hash": _sha256_hex(keys),
        }
    )
    return result[result["video_id"] != ""].reset_index(drop=True)


def as_of(frame: pd.DataFrame, run_date: date) -> pd.DataFrame:
    """Rows captured on or before the end of `run_date` (UTC); rows without captured_at count."""
    cutoff = pd.Timestamp(datetime.combine(run_date, time.max, tzinfo=UTC))
    keep = frame["captured_ts"].isna() | (frame["captured_ts"] <= cutoff)
    return frame[keep]


def unparseable_dates(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose captured_at is written but is not ISO 8601 (`03/10/2026 10:00`): they count as undated,
    so the as-of filter keeps them whatever day they were captured; the run reports them."""
    written = frame["captured_at"].str.strip() != ""
    return frame[written & frame["captured_ts"].isna()]


def dedupe_latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per video_id, sorted by video_id, by the one rule of `latest`: the latest captured_ts
    (rows without one lose to any dated row); at the same instant the larger source_hash wins, then the
    larger captured_at text, so the result does not depend on the order of the rows in the file."""
    winners = latest.latest_index(
        [frame["video_id"]],
        latest.instants(frame["captured_ts"]),
        [frame["source_hash"], frame["captured_at"]],
    )
    return frame.iloc[winners].reset_index(drop=True)


def read_rows(body: bytes | None, location: str, include_captured_at_in_hash: bool) -> pd.DataFrame:
    """Every row of the horizon file with its id, URL, dates and hash (before as-of and dedupe)."""
    if body is None:
        raise ConfigError(f"metadata {location} not found; pass --metadata PATH|s3://BUCKET/KEY")
    if not body.strip():
        raise ConfigError(f"metadata {location}: file is empty; check the upstream export")
    return prepare(parse_table(body, location), location, include_captured_at_in_hash)


def horizon(rows: pd.DataFrame, run_date: date) -> pd.DataFrame:
    """The run's candidate videos: as-of `run_date`, deduplicated, sorted by video_id."""
    return dedupe_latest(as_of(rows, run_date))


def load_horizon(
    body: bytes | None, location: str, run_date: date, include_captured_at_in_hash: bool
) -> pd.DataFrame:
    """The run's candidate videos: parsed, as-of `run_date`, deduplicated, sorted by video_id."""
    return horizon(read_rows(body, location, include_captured_at_in_hash), run_date)
