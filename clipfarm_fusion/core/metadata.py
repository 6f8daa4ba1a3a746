"""The metadata horizon: ONE streaming scan of a CSV or Parquet file (local or s3://) that finds ids and
URLs, filters as-of, keeps only the rows that can be new or changed, hashes those, and dedupes them.

Real horizon files carry many more columns, quoted multi-line text and emoji, and millions of rows, so
they go through a real parser (`horizon_file`: pyarrow's streaming CSV reader, or the Parquet reader
batch by batch), parsing only the columns we use, one block at a time: memory is one block plus the
rows kept (and the index of the known videos, `known.KnownIndex`, which holds no strings).

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

A corpus-sized day (a new strategy, a re-fusion) keeps nearly every row. So that a plan never holds more
than `limit` kept rows, a scan that passes the limit stops holding rows and returns instead the id bounds
that cut the kept rows into ranges of about `limit` (from a uniform sample of their ids); the caller then
scans once per range (`within`), each scan keeping only the rows of its id range, so a range's result is
exactly the full scan's restricted to those ids.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.core import horizon_file, latest
from clipfarm_fusion.core.known import KnownIndex, contains, key_set
from clipfarm_fusion.errors import ConfigError

# one pattern for both the per-URL helper and the vectorised scan (RE2 reads the same syntax)
_ID_FROM_URL = re.compile(r"(?:youtu\.be/|/shorts/|/embed/|/live/|[?&]v=)(?P<id>[A-Za-z0-9_-]{6,64})")

BLOCK_BYTES = 4 << 20  # CSV bytes parsed at a time: large enough to amortise per-block work, small to hold


def video_id_from_url(url: str) -> str | None:
    match = _ID_FROM_URL.search((url or "").strip())
    return match.group("id") if match else None


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
    - `bounds`: None when `rows` holds every kept row; else (the scan passed its `limit`, and `rows` is
      empty) the ascending video_ids that cut the kept rows into id ranges of about `limit` rows each
      (see `ranges`).

    With `within`, the rows and every count are those of the id range only.
    """

    rows: pd.DataFrame
    horizon_rows: int
    unparseable: int
    unparseable_samples: pd.DataFrame
    bounds: tuple[str, ...] | None = None

    def ranges(self) -> list[IdRange]:
        """The id ranges to scan one at a time, in video_id order: `[(None, None)]` when nothing was cut."""
        cuts = [None, *(self.bounds or ()), None]
        return list(zip(cuts[:-1], cuts[1:], strict=True))


IdRange = tuple[str | None, str | None]  # [low, high): None is unbounded; ids compare as UTF-8 bytes


def scan(
    body: bytes | Path | None,
    location: str,
    run_date: date,
    include_captured_at_in_hash: bool,
    *,
    known: KnownIndex | None = None,
    also: pa.Array | pa.ChunkedArray | None = None,
    sample: int = 5,
    within: IdRange | None = None,
    limit: int | None = None,
) -> HorizonScan:
    """The run's candidate videos from the horizon file (`body`: its bytes, or a local file holding
    them, which is read a block at a time and never held whole), read from `location`, in one pass.

    A row with a video id, captured on or before the end of `run_date` (UTC; undated rows count), is
    KEPT when `known` is None (a full scan), or its video_id is not in `known` (see `known.KnownIndex`:
    an unset cursor means "compare in full": every row of that video is kept),
    or its instant is later than the known `captured_ns`, or equal to it with another `hash64`, or its
    video_id is in `also` (None: empty). Kept rows are deduplicated by the module's rule, which gives
    exactly the full scan's rows of the videos with a kept row (see the module docstring for why).
    `within` keeps only the ids of one range; past `limit` kept rows the scan returns `bounds` instead of
    rows. ConfigError when the file is missing or unreadable.
    """
    require_body(body, location)
    source = horizon_file.Source(body)
    block_bytes = BLOCK_BYTES
    while True:
        keep = _Keep(run_date, known, also, within)
        try:
            return _scan(
                horizon_file.blocks(source, location, block_bytes),
                keep,
                include_captured_at_in_hash,
                sample,
                limit,
            )
        except horizon_file.RowTooLong:
            block_bytes *= 4


def require_body(body: bytes | Path | None, location: str) -> None:
    """ConfigError unless the horizon file exists and is not blank: checked before anything else is read."""
    if body is None:
        raise ConfigError(f"metadata {location} not found; pass --metadata PATH|s3://BUCKET/KEY")
    # all() stops at the first non-blank chunk
    if all(chunk.isspace() for chunk in horizon_file.Source(body).chunks()):
        raise ConfigError(f"metadata {location}: file is empty; check the upstream export")


class _Keep:
    """Which rows a scan keeps: as of the run date, then (when something is known) the rows that can be
    new or changed, or in `also`. The id sets are built once, for every block."""

    def __init__(
        self,
        run_date: date,
        known: KnownIndex | None,
        also: pa.Array | pa.ChunkedArray | None,
        within: IdRange | None = None,
    ) -> None:
        self.within = within if within is not None and within != (None, None) else None
        self.cutoff = pd.Timestamp(datetime.combine(run_date, time.max, tzinfo=UTC)).value
        self.known = known if known is not None and len(known) else None  # nothing known: keep all
        self.also = None
        if self.known is not None:
            self.processed_seen = np.zeros(len(self.known), dtype=bool)  # the processed row is in the file
            self.also = key_set(also) if also is not None and len(also) else None

    def inside(self, ids: pa.Array) -> pa.Array | None:
        """The mask of `ids` in the scan's id range (None: no range, every id)."""
        if self.within is None:
            return None
        low, high = self.within
        masks = [
            pc.greater_equal(ids, low) if low is not None else None,
            pc.less(ids, high) if high is not None else None,
        ]
        present = [m for m in masks if m is not None]
        return present[0] if len(present) == 1 else pc.and_(*present)

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
    blocks: Iterator[tuple[pa.Array, pa.Array, pa.Array]],
    keep: _Keep,
    include_captured_at: bool,
    sample: int,
    limit: int | None,
) -> HorizonScan:
    """Per block: strip, ids (then only the range's), instants, counts, the keep mask, and hash only the
    kept rows; then dedupe. Past `limit` kept rows, only a sample of the kept ids is held from then on."""
    kept: list[pa.RecordBatch] = []
    kept_ids: IdSample | None = None
    horizon_rows = unparseable = kept_rows = 0
    samples: list[tuple[str, str]] = []
    for raw_ids, raw_urls, captured_at in blocks:
        # pc.utf8_trim_whitespace strips exactly the code points str.strip() does
        urls = pc.utf8_trim_whitespace(raw_urls)
        ids = _ids(pc.utf8_trim_whitespace(raw_ids), urls)
        inside = keep.inside(ids)
        if inside is not None:
            ids, urls, captured_at = ids.filter(inside), urls.filter(inside), captured_at.filter(inside)
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
        kept_rows += len(rows)
        if kept_ids is None and limit is not None and kept_rows > limit:
            kept_ids = IdSample()  # too many to hold: from now on only where to cut them
            for batch in kept:
                kept_ids.add(batch.column(0))
            kept = []
        if len(rows) and kept_ids is not None:
            kept_ids.add(ids.take(pa.array(rows)))
        elif len(rows):
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
    table = pa.Table.from_batches(kept, schema=_KEPT)
    return HorizonScan(
        rows=keep.settle(dedupe_latest(table.to_pandas())),
        horizon_rows=horizon_rows,
        unparseable=unparseable,
        unparseable_samples=pd.DataFrame(samples, columns=["video_id", "captured_at"], dtype="str"),
        bounds=None if kept_ids is None else kept_ids.bounds(math.ceil(kept_rows / limit)),
    )


class IdSample:
    """A uniform sample of a stream of ids in bounded memory: every `stride`-th id of the stream, the
    stride doubling (and every other sampled id dropped) whenever the sample doubles past `size`, so it
    stays uniform whatever the order of the file."""

    def __init__(self, size: int = 65_536) -> None:
        self.size, self.stride, self.seen = size, 1, 0
        self.ids: list[pa.Array] = []
        self.held = 0

    def add(self, ids: pa.Array) -> None:
        first = (-self.seen) % self.stride  # the next stream position that is a multiple of the stride
        picked = ids.take(pa.array(np.arange(first, len(ids), self.stride)))
        self.seen += len(ids)
        self.ids.append(picked)
        self.held += len(picked)
        if self.held > 2 * self.size:
            merged = pa.concat_arrays(self.ids)
            self.ids = [merged.take(pa.array(np.arange(0, len(merged), 2)))]
            self.held, self.stride = len(self.ids[0]), self.stride * 2

    def bounds(self, parts: int) -> tuple[str, ...]:
        """The ascending, distinct ids that cut the sample (so, about, the stream) into `parts` equal parts."""
        merged = pa.concat_arrays(self.ids)
        ordered = merged.take(pc.array_sort_indices(merged))
        cuts = [ordered[len(ordered) * i // parts].as_py() for i in range(1, parts)]
        return tuple(sorted(set(cuts)))


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
