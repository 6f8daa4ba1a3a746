"""Reading the horizon file: which of its columns the scan uses, and those columns as written, block
by block, from CSV or Parquet bytes (in memory or in a local file, never held whole).

Reading a real export is a problem of its own, apart from what `metadata.scan` does with the rows:
quoted multi-line text, rows with too few or too many fields, unclosed quotes, bad UTF-8, byte-order
marks, typed Parquet columns. Here the file becomes three string arrays per block; the scan never sees
the file's format. The column rules (the names that are the id, the URL and captured_at; see
`metadata`) live here because they are how the reader chooses the only columns it parses.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from clipfarm_fusion.errors import ConfigError

URL_COLUMNS: tuple[str, ...] = ("video_url", "url", "youtube_url")
ID_COLUMN = "video_id"
CAPTURED_COLUMN = "captured_at"

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


class Source:
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


# --- reading: the three columns we use, block by block ---


class RowTooLong(Exception):
    """A CSV row does not fit in one block (Arrow needs it to): the scan starts over with larger ones."""


def blocks(source: Source, location: str, block_bytes: int) -> Iterator[tuple[pa.Array, pa.Array, pa.Array]]:
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
            raise RowTooLong from None
        if "Empty CSV file" in str(exc):
            raise ConfigError(f"metadata {location}: file is empty; check the upstream export") from None
        raise ConfigError(f"metadata {location}: cannot parse ({exc})") from None


def _positions(names: list[str], location: str) -> list[int | None]:
    """Where the `Columns` (video_id, captured_at, url) are among `names`; ConfigError when missing."""
    columns = resolve_columns(names)
    _require(columns, names, location)
    return [None if name is None else names.index(name) for name in columns]


def _csv_batches(source: Source, location: str, block_bytes: int) -> Iterator[list[pa.Array | None]]:
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


def _parquet_batches(source: Source, location: str) -> Iterator[list[pa.Array | None]]:
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


def _check_quotes(source: Source, location: str) -> None:
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


def _check_utf8(source: Source, location: str) -> None:
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
