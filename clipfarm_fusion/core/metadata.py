"""The metadata horizon: ONE streaming scan of a CSV or Parquet file (local or s3://) that finds ids and
URLs, filters as-of, keeps only the rows that can be new or changed, hashes those, and dedupes them.

Real horizon files carry many more columns, quoted multi-line text and emoji, and millions of rows, so
they go through a real parser (pyarrow's streaming CSV reader, or the Parquet reader batch by batch),
parsing only the columns we use, one block at a time: memory is one block plus the rows kept (and
the index of the known videos, `known.KnownIndex`, which holds no strings).

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

A daily run needs only the videos that can be new or changed. `known` says, per video the state has
seen, the instant and the hash (`hash64`, the first 8 bytes of its sha256) of the row it last processed.
`scan` keeps a row (after the as-of filter) when its video is not known, or is in `also`, or the row is
later than the one processed, or is at the same instant with another hash (the URL was edited in place);
rows older than the processed one cannot be the latest and are dropped unhashed. Only rows at the
processed instant are hashed to compare (8 bytes each, not held); only kept rows get their hex hash and
are held. The filter before the dedupe gives the dedupe of every row, restricted to the videos with a
kept row: a video whose latest row is unchanged keeps no row, and for a kept video every row that can
be its latest (those at or after the processed instant) is kept.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from clipfarm_fusion.core import latest
from clipfarm_fusion.core.known import KnownIndex, contains, key_set
from clipfarm_fusion.errors import ConfigError

URL_COLUMNS: tuple[str, ...] = ("video_url", "url", "youtube_url")
ID_COLUMN = "video_id"
CAPTURED_COLUMN = "captured_at"
# one pattern for both the per-URL helper and the vectorised scan (RE2 reads the same syntax)
_ID_FROM_URL = re.compile(r"(?:youtu\.be/|/shorts/|/embed/|/live/|[?&]v=)(?P<id>[A-Za-z0-9_-]{6,64})")

BLOCK_BYTES = 4 << 20  # CSV bytes parsed at a time: large enough to amortise per-block work, small to hold
BATCH_ROWS = 65_536  # Parquet rows read at a time
_UTF8_STEP = 1 << 20  # bytes per chunk of the whole-file checks
_HEADER_BYTES = 1 << 16  # bytes read first to find the header line

# A CSV field as Arrow's parser reads it: quoted only when it starts with a quote ("" inside is a quote,
# after the closing quote the rest is plain), else plain up to a comma or line break. Possessive
# quantifiers keep an unclosed quote from backtracking over the whole file.
_FIELD = rb'(?:"(?:[^"]++|"")*+"[^,\r\n]*+|(?!")[^,\r\n]*+)'
_HEADER = re.compile(
    rb"(?:\xef\xbb\xbf)?(?:\r\n|\r|\n)*+" + _FIELD + rb"(?:," + _FIELD + rb")*+(?:\r\n|\r|\n)?"
)
_FIELDS = re.compile(rb"(?:" + _FIELD + rb"[,\r\n])*+" + _FIELD + rb"?")  # fields up to an unclosed one
_CSV_PARSE = pacsv.ParseOptions(newlines_in_values=True)  # quoted multi-line text


def video_id_from_url(url: str) -> str | None:
    match = _ID_FROM_URL.search((url or "").strip())
    return match.group("id") if match else None


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


@dataclass(frozen=True)
class HorizonScan:
    """What one scan of the horizon file found.

    - `rows`: the kept videos, one row each (the latest by the module's rule), sorted by video_id, index
      0..n-1; columns `video_id, url, captured_at, captured_ts, source_hash`;
    - `horizon_rows`: rows with a video id that are as of the run date, kept or not (the horizon's size);
    - `unparseable`: rows with a video id, in the whole file, whose captured_at is written but is not ISO
      8601 (they count as undated, so the as-of filter keeps them; the run reports them);
    - `unparseable_samples`: `video_id, captured_at` of the first such rows, in file order (a CSV row
      with a wrong field count comes after the other rows of its block);
    """

    rows: pd.DataFrame
    horizon_rows: int
    unparseable: int
    unparseable_samples: pd.DataFrame


def scan(
    body: bytes | Path | None,
    location: str,
    run_date: date,
    include_captured_at_in_hash: bool,
    *,
    known: KnownIndex | None = None,
    also: pa.Array | pa.ChunkedArray | None = None,
    sample: int = 5,
) -> HorizonScan:
    """The run's candidate videos from the horizon file (`body`: its bytes, or a local file holding
    them, which is read a block at a time and never held whole), read from `location`, in one pass.

    A row with a video id, captured on or before the end of `run_date` (UTC; undated rows count), is
    KEPT when `known` is None (a full scan), or its video_id is not in `known` (see `known.KnownIndex`:
    an unset cursor means "compare in full": every row of that video is kept),
    or its instant is later than the known `captured_ns`, or equal to it with another `hash64`, or its
    video_id is in `also` (None: empty). Kept rows are deduplicated by the module's rule, which gives
    exactly the full scan's rows of the videos with a kept row (see the module docstring for why).
    ConfigError when the file is missing or unreadable.
    """
    require_body(body, location)
    source = _Source(body)
    keep = _Keep(run_date, known, also)
    block_bytes = BLOCK_BYTES
    while True:
        try:
            return _scan(_blocks(source, location, block_bytes), keep, include_captured_at_in_hash, sample)
        except _RowTooLong:
            block_bytes *= 4


def require_body(body: bytes | Path | None, location: str) -> None:
    """ConfigError unless the horizon file exists and is not blank: checked before anything else is read."""
    if body is None:
        raise ConfigError(f"metadata {location} not found; pass --metadata PATH|s3://BUCKET/KEY")
    if all(chunk.isspace() for chunk in _Source(body).chunks()):  # stops at the first non-blank chunk
        raise ConfigError(f"metadata {location}: file is empty; check the upstream export")


class _Source:
    """The horizon file's bytes, in memory or in a local file: read in chunks and streamed to Arrow, so
    a file need never be held whole (a 10M-row horizon is over 1 GB)."""

    def __init__(self, body: bytes | Path) -> None:
        self.body = body
        self.size = len(body) if isinstance(body, bytes) else Path(body).stat().st_size

    def head(self, size: int) -> bytes:
        if isinstance(self.body, bytes):
            return self.body[:size]
        with open(self.body, "rb") as handle:
            return handle.read(size)

    def chunks(self, size: int = _UTF8_STEP) -> Iterator[bytes]:
        if isinstance(self.body, bytes):
            for start in range(0, len(self.body), size):
                yield self.body[start : start + size]
            return
        with open(self.body, "rb") as handle:
            while chunk := handle.read(size):
                yield chunk

    def stream(self, start: int = 0) -> pa.NativeFile:
        """An Arrow input stream from byte `start` on."""
        if isinstance(self.body, bytes):
            return pa.BufferReader(pa.py_buffer(self.body).slice(start))
        stream = pa.OSFile(str(self.body))
        stream.seek(start)
        return stream

    def whole(self) -> bytes:
        """All of it at once: only for the slow check of a file whose quotes do not pair up."""
        return self.body if isinstance(self.body, bytes) else Path(self.body).read_bytes()


class _Keep:
    """Which rows a scan keeps: as of the run date, then (when something is known) the rows that can be
    new or changed, or in `also`. The id sets are built once, for every block."""

    def __init__(
        self, run_date: date, known: KnownIndex | None, also: pa.Array | pa.ChunkedArray | None
    ) -> None:
        self.cutoff = pd.Timestamp(datetime.combine(run_date, time.max, tzinfo=UTC)).value
        self.known = known if known is not None and len(known) else None  # nothing known: keep all
        self.also = None
        if self.known is not None:
            self.processed_seen = np.zeros(len(self.known), dtype=bool)  # the processed row is in the file
            self.also = key_set(also) if also is not None and len(also) else None

    def as_of(self, has_id: np.ndarray, instants: np.ndarray) -> np.ndarray:
        return has_id & (instants <= self.cutoff)  # undated rows are OLDEST, so they pass

    def wanted(
        self, ids: pa.Array, instants: np.ndarray, hash_keys: pa.Array, rows: np.ndarray
    ) -> np.ndarray | None:
        """Which of the as-of `rows` can be new or changed (a mask over the block); None when all can."""
        if self.known is None:
            return None
        known = self.known
        at = known.locate(ids)
        found = at >= 0
        position = np.where(found, at, 0)
        wanted = ~found | known.unset[position] | (instants > known.captured_ns[position])
        same = np.flatnonzero(found & ~wanted & (instants == known.captured_ns[position]))
        same = same[np.isin(same, rows)]
        if len(same):
            hashes = hash64(hash_keys.take(pa.array(same)))
            unchanged = hashes == known.hash64[position[same]]
            wanted[same] = ~unchanged
            self.processed_seen[position[same[unchanged]]] = True
        if self.also is not None:
            wanted |= contains(self.also, ids)
        return wanted

    def settle(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Drop the videos whose processed row is still their latest. The processed row is not kept
        (it is unchanged), so a kept row at the same instant with a SMALLER hash would otherwise win the
        dedupe and pass for a change; the rule's tie-break (the larger source_hash) says the processed
        row wins, and comparing the 8-byte prefixes as unsigned numbers is comparing the hex order."""
        if self.known is None or rows.empty:
            return rows
        ids = pa.array(rows["video_id"].tolist(), pa.string())
        known = self.known
        at = known.locate(ids)
        found = at >= 0
        position = np.where(found, at, 0)
        winner_ns = latest.instants(rows["captured_ts"])
        winner_hash = hash64_of_hex(rows["source_hash"]).view(np.uint64)
        still = (
            found
            & self.processed_seen[position]
            & ~known.unset[position]
            & (winner_ns == known.captured_ns[position])
            & (winner_hash < known.hash64[position].view(np.uint64))
        )
        if self.also is not None:
            still &= ~contains(self.also, ids)
        return rows[~still].reset_index(drop=True)


def _scan(
    blocks: Iterator[tuple[pa.Array, pa.Array, pa.Array]], keep: _Keep, include_captured_at: bool, sample: int
) -> HorizonScan:
    """Per block: strip, ids, instants, counts, the keep mask, and hash only the kept rows; then dedupe."""
    kept: list[pa.RecordBatch] = []
    horizon_rows = unparseable = 0
    samples: list[tuple[str, str]] = []
    for raw_ids, raw_urls, captured_at in blocks:
        # pc.utf8_trim_whitespace strips exactly the code points str.strip() does
        urls = pc.utf8_trim_whitespace(raw_urls)
        ids = _ids(pc.utf8_trim_whitespace(raw_ids), urls)
        instants = latest.instants(captured_at)
        has_id = pc.not_equal(ids, "").to_numpy(zero_copy_only=False)
        written = pc.not_equal(pc.utf8_trim_whitespace(captured_at), "").to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(has_id & written & (instants == latest.OLDEST))
        unparseable += len(bad)
        if len(samples) < sample and len(bad):
            chosen = pa.array(bad[: sample - len(samples)])
            samples += zip(ids.take(chosen).to_pylist(), captured_at.take(chosen).to_pylist(), strict=True)
        as_of = keep.as_of(has_id, instants)
        horizon_rows += int(as_of.sum())
        keys = pc.binary_join_element_wise(urls, captured_at, "|") if include_captured_at else urls
        wanted = keep.wanted(ids, instants, keys, np.flatnonzero(as_of))
        rows = np.flatnonzero(as_of if wanted is None else as_of & wanted)
        if len(rows):
            taken = pa.array(rows)
            kept.append(
                _hashed(
                    ids.take(taken),
                    urls.take(taken),
                    captured_at.take(taken),
                    keys.take(taken),
                    instants[rows],
                )
            )
    return HorizonScan(
        rows=keep.settle(dedupe_latest(pa.Table.from_batches(kept, schema=_KEPT).to_pandas())),
        horizon_rows=horizon_rows,
        unparseable=unparseable,
        unparseable_samples=pd.DataFrame(samples, columns=["video_id", "captured_at"], dtype="str"),
    )


_KEPT = pa.schema(
    [
        ("video_id", pa.string()),
        ("url", pa.string()),
        ("captured_at", pa.string()),
        ("captured_ts", pa.timestamp("ns", tz="UTC")),
        ("source_hash", pa.string()),
    ]
)


def _ids(ids: pa.Array, urls: pa.Array) -> pa.Array:
    """The stripped video_id column's value, else the id parsed from the stripped URL, else ""."""
    missing = pc.equal(ids, "")
    if not pc.any(missing).as_py():
        return ids
    parsed = pc.struct_field(pc.extract_regex(urls.filter(missing), _ID_FROM_URL.pattern), "id")
    return pc.replace_with_mask(ids, missing, pc.fill_null(parsed, ""))


def _sha256_hex(keys: pa.Array) -> pa.Array:
    sha256 = hashlib.sha256
    return pa.array([sha256(key.encode("utf-8")).hexdigest() for key in keys.to_pylist()], pa.string())


def hash64(keys: pa.Array | list[str]) -> np.ndarray:
    """`(N,)` int64: the first 8 bytes of each key's sha256 (big-endian, signed), i.e.
    `hash64_of_hex(source_hash)` of the row's source_hash, without making the hex."""
    values = keys.to_pylist() if isinstance(keys, pa.Array) else keys
    sha256 = hashlib.sha256
    digests = b"".join(sha256(key.encode("utf-8")).digest()[:8] for key in values)
    return np.frombuffer(digests, dtype=">i8").astype(np.int64)


def hash64_of_hex(source_hashes: Iterable[str | None]) -> np.ndarray:
    """`(N,)` int64 of the first 16 hex digits of each source_hash (0 for a missing or short one)."""
    values = [int(h[:16], 16) if isinstance(h, str) and len(h) >= 16 else 0 for h in source_hashes]
    return np.array(values, dtype=np.uint64).view(np.int64)


def _hashed(
    ids: pa.Array, urls: pa.Array, captured_at: pa.Array, keys: pa.Array, instants: np.ndarray
) -> pa.RecordBatch:
    """Kept rows -> the output columns, hashing only them (the hash is the scan's costly step)."""
    captured_ts = pa.array(instants, pa.timestamp("ns", tz="UTC"), mask=instants == latest.OLDEST)
    return pa.RecordBatch.from_arrays([ids, urls, captured_at, captured_ts, _sha256_hex(keys)], schema=_KEPT)


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


# --- reading: the three columns we use, block by block ---


class _RowTooLong(Exception):
    """A CSV row does not fit in one block (Arrow needs it to): the scan starts over with larger ones."""


def _blocks(
    source: _Source, location: str, block_bytes: int
) -> Iterator[tuple[pa.Array, pa.Array, pa.Array]]:
    """`(video_id, url, captured_at)` as written, per block: string arrays without nulls ("" where the
    file has no such column or no value). ConfigError when the file cannot be read or lacks columns."""
    try:
        if location.lower().endswith((".parquet", ".pq")) or source.head(4) == b"PAR1":
            batches = _parquet_batches(source, location)
        else:
            batches = _csv_batches(source, location, block_bytes)
        for columns in batches:
            size = max(len(c) for c in columns if c is not None)
            empty = pa.repeat(pa.scalar("", pa.string()), size) if None in columns else None
            video_id, captured_at, url = (empty if c is None else c for c in columns)
            yield video_id, url, captured_at
    except (pa.ArrowException, OSError, ValueError) as exc:
        if (
            "straddl" in str(exc) and block_bytes < source.size
        ):  # Arrow: "straddling object straddles two block"
            raise _RowTooLong from None
        if "Empty CSV file" in str(exc):
            raise ConfigError(f"metadata {location}: file is empty; check the upstream export") from None
        raise ConfigError(f"metadata {location}: cannot parse ({exc})") from None


def _positions(names: list[str], location: str) -> list[int | None]:
    """Where the `Columns` (video_id, captured_at, url) are among `names`; ConfigError when missing."""
    columns = resolve_columns(names)
    _require(columns, names, location)
    return [None if name is None else names.index(name) for name in columns]


def _csv_batches(source: _Source, location: str, block_bytes: int) -> Iterator[list[pa.Array | None]]:
    """A CSV's used columns, block by block, all as strings.

    The header is parsed on its own, then the rest is read under generated positional names, so
    duplicate, empty or odd header names cannot confuse the reader, and only the used columns are
    converted. The whole file is checked to be UTF-8 first (the text stage reads it so); then Arrow
    need not check it again. Rows with fewer or more fields than the header are kept as pandas read
    them (missing fields empty, extra ones ignored): Arrow hands them to `_Ragged`.
    """
    _check_utf8(source, location)
    _check_quotes(source, location)
    head = source.head(_HEADER_BYTES)
    end = _HEADER.match(head).end()  # type: ignore[union-attr]  # every part of the pattern is optional
    while end == len(head) < source.size:  # a header longer than we read: read more
        head = source.head(len(head) * 4)
        end = _HEADER.match(head).end()  # type: ignore[union-attr]
    header = head[:end] if head[:end].endswith((b"\n", b"\r")) else head[:end] + b"\n"
    names = pacsv.open_csv(
        pa.BufferReader(header), read_options=pacsv.ReadOptions(use_threads=False), parse_options=_CSV_PARSE
    ).schema.names
    positions = _positions(names, location)
    if end == source.size:
        return
    # the rows are read from the header's line break on (an empty line, which Arrow skips): read from
    # the next byte, a U+FEFF opening the first row would be taken for a byte-order mark and dropped
    start = end - 1 if head[end - 1 : end] in (b"\n", b"\r") else end
    used = sorted({p for p in positions if p is not None})
    ragged = _Ragged(used)
    reader = pacsv.open_csv(
        source.stream(start),
        read_options=pacsv.ReadOptions(
            use_threads=False, block_size=block_bytes, column_names=[f"f{i}" for i in range(len(names))]
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=ragged),
        convert_options=_string_columns(used, check_utf8=False),
    )
    for batch in reader:
        for part in (batch, *ragged.drain()):
            yield [None if p is None else part.column(f"f{p}") for p in positions]
    for part in ragged.drain():  # set aside in a last block that had no regular row
        yield [None if p is None else part.column(f"f{p}") for p in positions]


def _string_columns(used: list[int], **options: bool) -> pacsv.ConvertOptions:
    """Only the columns at `used` (named f0, f1, ...), every one as a string, "" never null."""
    return pacsv.ConvertOptions(
        column_types={f"f{i}": pa.string() for i in used},
        include_columns=[f"f{i}" for i in used],
        strings_can_be_null=False,
        **options,
    )


class _Ragged:
    """Arrow's handler for rows whose field count is not the header's: it sets them aside, and `drain`
    parses them (with Arrow, grouped by field count), a missing column read as "" and extra ones
    dropped, as pandas did; they join the scan just after the block they came in."""

    def __init__(self, used: list[int]) -> None:
        self.used = used
        self.rows: dict[int, list[str]] = {}

    def __call__(self, row: pacsv.InvalidRow) -> str:
        self.rows.setdefault(row.actual_columns, []).append(row.text)
        return "skip"

    def drain(self) -> list[pa.RecordBatch]:
        parts = []
        for width, texts in self.rows.items():
            text = "\n" + "\n".join(texts) + "\n"  # the leading line break: see _csv_batches
            table = pacsv.read_csv(
                pa.BufferReader(text.encode()),
                read_options=pacsv.ReadOptions(
                    use_threads=False, column_names=[f"f{i}" for i in range(width)]
                ),
                parse_options=_CSV_PARSE,
                convert_options=_string_columns(self.used, include_missing_columns=True),
            )
            missing = [name for name in table.column_names if table[name].null_count]
            for name in missing:  # a column past the row's last field
                table = table.set_column(table.column_names.index(name), name, pc.fill_null(table[name], ""))
            parts += table.to_batches()
        self.rows = {}
        return parts


def _parquet_batches(source: _Source, location: str) -> Iterator[list[pa.Array | None]]:
    """A Parquet file's used columns, batch by batch, as strings (null read as "").

    A column of another type than string is read whole and turned into text by pandas'
    `astype("string")`, as the full-file read did: that text can depend on the whole column (one null
    makes integers floats, `1.0`; one fractional second gives every timestamp a fraction), so turning
    it batch by batch would change ids and hashes. Only string columns are truly streamed.
    """
    # see manifest.read for why Arrow's thread pool is not used
    parquet = pq.ParquetFile(source.stream(), pre_buffer=False)
    schema = parquet.schema_arrow
    positions = _positions(schema.names, location)
    used = sorted({p for p in positions if p is not None})
    typed = {
        i: _pandas_text(parquet.read(columns=[schema.names[i]], use_threads=False).column(0))
        for i in used
        if not (pa.types.is_string(schema.field(i).type) or pa.types.is_large_string(schema.field(i).type))
    }
    offset = 0
    columns = [schema.names[i] for i in used]
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False):
        read = dict(zip(used, batch.columns, strict=True))
        yield [
            None
            if p is None
            else typed[p].slice(offset, len(batch))
            if p in typed
            else pc.fill_null(read[p].cast(pa.string()), "")
            for p in positions
        ]
        offset += len(batch)


def _pandas_text(values: pa.ChunkedArray) -> pa.Array:
    text = pd.Series(values.to_pandas()).astype("string").fillna("")
    return pa.array(text.to_numpy(dtype=object), pa.string())


def _check_quotes(source: _Source, location: str) -> None:
    """ConfigError when a quoted field is never closed: Arrow would read the rest of the file into it
    without a word (pandas refused such a file). An even count of quotes is the usual case and proves
    nothing is open in any file whose quotes all belong to quoted fields; an odd count is checked field
    by field (slow, but only then: a plain field may hold a quote, as in `5" screen`)."""
    if sum(chunk.count(b'"') for chunk in source.chunks()) % 2 == 0:
        return
    body = source.whole()
    end = _FIELDS.match(body).end()  # type: ignore[union-attr]  # every part of the pattern is optional
    if end < len(body):
        line = body.count(b"\n", 0, end) + 1
        raise ConfigError(
            f"metadata {location}: cannot parse (the quoted field opened on line {line} is never closed)"
        )


def _check_utf8(source: _Source, location: str) -> None:
    """ConfigError unless the whole file is UTF-8, naming the first bad byte; decoded a chunk at a time
    (C speed, about 1 GB/s), so memory stays bounded."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    start = 0
    for chunk in source.chunks():
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(chunk, final=start + len(chunk) >= source.size)
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"metadata {location}: not UTF-8 ({exc.reason} at byte {start - pending + exc.start}); "
                "re-export it as UTF-8"
            ) from None
        start += len(chunk)


# --- membership of ids in a large set ---
