"""The metadata horizon: real parsing, id from URL, hashing, as-of filter, dedupe, clear errors, and the
incremental scan that keeps (and hashes) only the rows that can be new or changed."""

import hashlib
import io
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from clipfarm_fusion.core import horizon_file, latest, metadata
from clipfarm_fusion.core import known as known_index
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.stores import s3io

DAY = date(2026, 3, 1)


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def load(body, location="m.csv", run_date=DAY, with_ts=False):
    """The full scan's videos (nothing known, so every row is kept), by id."""
    return metadata.scan(body, location, run_date, with_ts).rows.set_index("video_id")


CSV = (
    "video_id,url,captured_at,title,extra\n"
    'abc123,https://youtube.com/shorts/abc123,2026-02-27T10:00:00Z,"old, ""title""",1\n'
    'abc123,https://youtube.com/shorts/abc123?x,2026-02-28T10:00:00Z,"line one\nline two 🎬",2\n'
    "late99,https://youtube.com/shorts/late99,2026-03-02T00:00:01Z,later,3\n"
    "nodate,https://youtube.com/shorts/nodate,,no date,4\n"
    "edge00,https://youtube.com/shorts/edge00,2026-03-01T23:59:59+00:00,edge,5\n"
).encode()

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)


def test_dedupes_to_latest_captured_at():
    frame = load(CSV)
    assert frame.loc["abc123", "url"] == "https://youtube.com/shorts/abc123?x"
    assert frame.loc["abc123", "captured_at"] == "2026-02-28T10:00:00Z"


def test_as_of_drops_rows_captured_after_the_run_date_and_keeps_undated():
    frame = load(CSV)
    assert set(frame.index) == {"abc123", "nodate", "edge00"}
    assert "late99" in load(CSV, run_date=date(2026, 3, 2)).index


def test_as_of_picks_the_latest_row_before_the_cutoff():
    frame = load(CSV, run_date=date(2026, 2, 27))
    assert frame.loc["abc123", "url"] == "https://youtube.com/shorts/abc123"


def test_source_hash_is_sha256_of_url():
    assert load(CSV).loc["abc123", "source_hash"] == sha("https://youtube.com/shorts/abc123?x")


def test_source_hash_with_captured_at():
    frame = load(CSV, with_ts=True)
    assert frame.loc["abc123", "source_hash"] == sha(
        "https://youtube.com/shorts/abc123?x|2026-02-28T10:00:00Z"
    )


def test_video_id_parsed_from_url_column_when_absent():
    body = (
        b"video_url,captured_at,notes\n"
        b'https://www.youtube.com/shorts/Xy_z-123,2026-02-01,"a\nb"\n'
        b"https://youtu.be/Qq11Ww22,2026-02-01,c\n"
        b"https://www.youtube.com/watch?v=Mm33Nn44&t=3,2026-02-01,d\n"
        b"https://example.com/nothing,2026-02-01,e\n"
    )
    frame = load(body)
    assert sorted(frame.index) == ["Mm33Nn44", "Qq11Ww22", "Xy_z-123"]
    assert frame.loc["Qq11Ww22", "source_hash"] == sha("https://youtu.be/Qq11Ww22")


def test_parquet_is_read_too():
    frame = pd.DataFrame(
        {
            "video_id": ["p1", "p2"],
            "url": ["u1", "u2"],
            "captured_at": ["2026-01-01", "2026-01-02"],
            "n": [1, 2],
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    result = load(buffer.getvalue(), location="m.parquet")
    assert result.loc["p2", "source_hash"] == sha("u2")


def test_reads_local_and_s3_locations(tmp_path, client, bucket):
    path = tmp_path / "horizon.csv"
    path.write_bytes(CSV)
    client.put_object(Bucket=bucket, Key="meta/h.csv", Body=CSV)
    local = load(s3io.read_uri(client, str(path)))
    remote = load(s3io.read_uri(client, f"s3://{bucket}/meta/h.csv"))
    pd.testing.assert_frame_equal(local, remote)
    assert s3io.read_uri(client, f"s3://{bucket}/meta/missing.csv") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "not found"),
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"title,views\nx,1\n", "needs a video_id column"),
        (b"video_id,title\nabc,x\n", "needs a URL column"),
        ("video_id,url\nabc,caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("video_id,url,title\nabc,u,caf\xe9\n".encode("latin-1"), "not UTF-8"),  # in a column we do not use
        (b'video_id,url,title\nabc,u,"never closed\nxyz,v,w\n', "cannot parse"),
        (b"\xef\xbb\xbf\n\n", "empty"),
    ],
)
def test_bad_metadata_is_a_config_error_naming_the_file(body, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(body, location="s3://b/meta.csv")
    assert "s3://b/meta.csv" in str(info.value)


def test_a_file_with_no_parseable_dates_keeps_every_row():
    frame = load(b"video_id,url,captured_at\na1,u1,\nb2,u2,not a date\n")
    assert sorted(frame.index) == ["a1", "b2"]


def test_header_only_file_is_an_empty_horizon():
    assert load(b"video_id,url,captured_at\n").empty


# --- the text stage's rules for the URL column, the hash and the id (must match it byte for byte) ---


@pytest.mark.parametrize("url_name", ["Video_URL", "VIDEO_URL", "Url", "YouTube_URL"])
def test_url_column_is_found_case_insensitively(url_name):
    body = f"Video_ID,{url_name},Captured_At\nabc123,https://youtu.be/abc123,2026-02-01\n".encode()
    frame = load(body, with_ts=True)
    assert frame.loc["abc123", "source_hash"] == sha("https://youtu.be/abc123|2026-02-01")
    assert frame.loc["abc123", "captured_at"] == "2026-02-01"


def test_named_url_columns_win_in_the_text_stage_order_whatever_the_file_order():
    body = (
        b"page_url,youtube_url,url,video_url,video_id\n"
        b"https://p.example/a,https://yt.example/a,https://u.example/a,https://v.example/a,a1\n"
    )
    assert load(body).loc["a1", "source_hash"] == sha("https://v.example/a")
    without_video_url = b"page_url,youtube_url,url,video_id\nhttps://p.example/a,https://yt.example/a,u,a1\n"
    assert load(without_video_url).loc["a1", "url"] == "u"
    only_youtube_url = b"page_url,YOUTUBE_URL,video_id\nhttps://p.example/a,https://yt.example/a,a1\n"
    assert load(only_youtube_url).loc["a1", "url"] == "https://yt.example/a"


def test_thumbnail_url_is_never_chosen_and_any_other_url_column_is_the_fallback():
    body = (
        b"video_id,Thumbnail_URL,thumb_url_small,Page_Url,other_url\n"
        b"a1,https://img.example/a.jpg,https://img.example/s.jpg,https://p.example/a,https://o.example/a\n"
    )
    frame = load(body)
    assert frame.loc["a1", "url"] == "https://p.example/a"
    assert frame.loc["a1", "source_hash"] == sha("https://p.example/a")
    with pytest.raises(ConfigError, match="needs a URL column"):
        load(b"video_id,thumbnail_url\na1,https://img.example/a.jpg\n")


def test_url_is_stripped_before_hashing_and_in_the_output():
    body = b'video_id,url\na1,"  https://youtu.be/a1xxxx \t"\n'
    frame = load(body)
    assert frame.loc["a1", "url"] == "https://youtu.be/a1xxxx"
    assert frame.loc["a1", "source_hash"] == sha("https://youtu.be/a1xxxx")


def test_captured_at_is_hashed_exactly_as_written_but_parsed_stripped():
    body = b'video_id,url,captured_at\na1,https://youtu.be/a1xxxx," 2026-02-01T10:00:00Z "\n'
    frame = load(body, with_ts=True)
    assert frame.loc["a1", "source_hash"] == sha("https://youtu.be/a1xxxx| 2026-02-01T10:00:00Z ")
    assert frame.loc["a1", "captured_at"] == " 2026-02-01T10:00:00Z "
    assert frame.loc["a1", "captured_ts"] == pd.Timestamp("2026-02-01T10:00:00Z")
    assert load(body, run_date=date(2026, 1, 31)).empty  # the parsed instant drives the as-of filter


def test_only_the_needed_columns_are_parsed_csv_and_parquet():
    frame = pd.DataFrame(
        {
            "title": ["t"],
            "Video_ID": ["a1"],
            "thumbnail_url": ["https://img.example/a.jpg"],
            "channel_url": ["https://c.example"],
            "VIDEO_URL": ["https://youtu.be/a1xxxx"],
            "Captured_At": ["2026-02-01"],
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    for body, location in ((frame.to_csv(index=False).encode(), "m.csv"), (buffer.getvalue(), "m.parquet")):
        blocks = [
            [column.to_pylist() for column in block]
            for block in horizon_file.blocks(horizon_file.Source(body), location, 1 << 20)
        ]
        assert blocks == [[["a1"], ["https://youtu.be/a1xxxx"], ["2026-02-01"]]]  # video_id, url, captured_at
    result = load(buffer.getvalue(), location="m.parquet", with_ts=True)
    assert result.loc["a1", "source_hash"] == sha("https://youtu.be/a1xxxx|2026-02-01")


def test_video_id_column_wins_else_the_id_is_parsed_from_the_hashed_url_column_only():
    body = (
        b"Video_ID,url,youtube_url\n"
        b"keep01,https://youtu.be/other123,https://youtu.be/third123\n"
        b',"  https://youtu.be/Zz99Yy88  ",https://youtu.be/ignored1\n'
        b",https://example.com/no-id,https://youtu.be/NotUsed1\n"
    )
    frame = load(body)
    assert sorted(frame.index) == ["Zz99Yy88", "keep01"]
    assert frame.loc["Zz99Yy88", "source_hash"] == sha("https://youtu.be/Zz99Yy88")


def test_video_id_from_url_parses_a_stripped_url():
    assert metadata.video_id_from_url("  https://www.youtube.com/watch?v=Mm33Nn44\n") == "Mm33Nn44"
    assert metadata.video_id_from_url("") is None


# --- the one "latest row" rule (clipfarm_fusion/core/latest.py) as the metadata dedupe uses it ---


def test_dedupe_compares_instants_across_offsets_in_either_file_order():
    rows = [
        "a1,https://youtu.be/a1xxxx?old,2026-03-01T10:00:00+02:00\n",  # 08:00Z
        "a1,https://youtu.be/a1xxxx?new,2026-03-01T09:00:00Z\n",
    ]
    for ordered in (rows, rows[::-1]):
        frame = load(("video_id,url,captured_at\n" + "".join(ordered)).encode())
        assert frame.loc["a1", "url"] == "https://youtu.be/a1xxxx?new"


def test_dedupe_tie_at_the_same_instant_goes_to_the_larger_source_hash_not_the_file_order():
    urls = ["https://youtu.be/a1xxxx?x", "https://youtu.be/a1xxxx?y"]
    winner = max(urls, key=sha)
    rows = [
        f"a1,{urls[0]},2026-03-01T10:00:00+02:00\n",
        f"a1,{urls[1]},2026-03-01T08:00:00Z\n",  # the same instant, spelled differently
    ]
    for ordered in (rows, rows[::-1]):
        frame = load(("video_id,url,captured_at\n" + "".join(ordered)).encode())
        assert frame.loc["a1", "url"] == winner
        assert frame.loc["a1", "source_hash"] == sha(winner)


def test_latest_index_rule():
    instants = latest.instants(
        ["2026-03-01T10:00:00+02:00", "2026-03-01T09:00:00Z", "", "not a date", "2026-03-01", " 2026-03-01 "]
    )
    assert instants[2] == instants[3] == latest.OLDEST
    assert instants[0] < instants[1] and instants[4] == instants[5]
    keys = ["a", "a", "b", "b", "c", "c"]
    assert latest.latest_index([keys], instants).tolist() == [1, 2, 4]  # full tie: the first row
    assert latest.latest_index([keys], instants, [["x", "y", None, "z", "p", "q"]]).tolist() == [1, 3, 5]
    assert latest.latest_index([[]], []).tolist() == []


# --- reading CSV: odd headers, odd rows ---


def test_odd_headers_bom_crlf_blank_lines_duplicates_and_a_multiline_name():
    body = b'\xef\xbb\xbf\r\nvideo_id,URL,url,"odd\r\nname",\r\n a1 ,https://youtu.be/a1,second,x,y\r\n'
    frame = load(body)
    assert list(frame.index) == ["a1"]
    assert frame.loc["a1", "url"] == "https://youtu.be/a1"  # the first of the two URL columns
    assert load(b"video_id,url").empty  # a header without a line break and no rows


def test_a_byte_order_mark_char_opening_the_first_row_is_data_not_a_bom():
    frame = load("video_id,url\n\ufeffa1,u\n".encode())
    assert list(frame.index) == ["\ufeffa1"]  # str.strip() keeps U+FEFF, so the id does too


def test_rows_with_too_few_or_too_many_fields_are_read_as_pandas_read_them():
    body = (
        b"video_id,url,captured_at,title\n"
        b"a1,https://youtu.be/a1\n"  # short: captured_at and title empty
        b"b2,https://youtu.be/b2,2026-02-01,t,extra,more\n"  # long: the extra fields are ignored
        b"   \n"  # only spaces: no id, no row
        b'c3,"https://youtu.be/c3",2026-02-02,"multi\nline"\n'
    )
    frame = load(body, with_ts=True)
    assert sorted(frame.index) == ["a1", "b2", "c3"]
    assert frame.loc["a1", "captured_at"] == "" and pd.isna(frame.loc["a1", "captured_ts"])
    assert frame.loc["a1", "source_hash"] == sha("https://youtu.be/a1|")
    assert frame.loc["b2", "source_hash"] == sha("https://youtu.be/b2|2026-02-01")


def test_a_quote_inside_a_plain_field_is_text():
    frame = load(b'video_id,url,title\na1,https://youtu.be/a1,5" screen\nb2,https://youtu.be/b2,x\n')
    assert sorted(frame.index) == ["a1", "b2"]


def many_rows(count=400):
    lines = ["video_id,url,captured_at,title"]
    for i in range(count):
        day = (
            ""
            if i % 7 == 0
            else "not a date"
            if i % 11 == 0
            else f"2026-02-{1 + i % 28:02d}T{i % 24:02d}:00:00Z"
        )
        lines.append(f'v{i % 150:04d},https://youtu.be/v{i % 150:04d}?{i},{day},"t {i}, ""q""\nline 🎬"')
        if i % 50 == 0:
            lines.append(f"v{i % 150:04d},https://youtu.be/short{i}")  # a short row
    lines.append('big001,https://youtu.be/big001,2026-02-03,"' + "x" * 3000 + '"')  # longer than a block
    return ("\n".join(lines) + "\n").encode()


def test_small_blocks_give_the_same_scan_as_one_block(monkeypatch):
    body = many_rows()
    full = metadata.scan(body, "m.csv", DAY, True).rows
    unchanged = processed(full.iloc[::2])  # half the videos processed as they are now
    edited = known_table([(v, at("2026-02-15"), 0) for v in full["video_id"].iloc[1::6]])
    known = pa.concat_tables([unchanged, edited])
    whole = [metadata.scan(body, "m.csv", DAY, True, known=index(k), sample=4) for k in (None, known)]
    monkeypatch.setattr(metadata, "BLOCK_BYTES", 256)  # many blocks; the long row makes the scan start over
    for expected, k in zip(whole, (None, known), strict=True):
        blocks = metadata.scan(body, "m.csv", DAY, True, known=index(k), sample=4)
        pd.testing.assert_frame_equal(blocks.rows, expected.rows)
        pd.testing.assert_frame_equal(blocks.unparseable_samples, expected.unparseable_samples)
        assert (blocks.horizon_rows, blocks.unparseable) == (expected.horizon_rows, expected.unparseable)
    assert 0 < len(whole[1].rows) < len(whole[0].rows)


def test_a_file_on_disk_scans_as_its_bytes_do_and_is_never_read_whole(tmp_path, monkeypatch):
    """The pipeline hands the scan a downloaded file: same rows, counts and errors as the bytes, read in
    chunks and blocks (the whole-file buffer is only for the rare unclosed-quote check)."""
    body = many_rows()
    path = tmp_path / "horizon.csv"
    path.write_bytes(body)
    monkeypatch.setattr(metadata, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(horizon_file, "_UTF8_STEP", 1000)
    opened = []
    real_whole = horizon_file.Source.whole
    monkeypatch.setattr(horizon_file.Source, "whole", lambda self: opened.append(1) or real_whole(self))
    from_file = metadata.scan(path, "s3://b/horizon.csv", DAY, True, sample=4)
    from_bytes = metadata.scan(body, "s3://b/horizon.csv", DAY, True, sample=4)
    pd.testing.assert_frame_equal(from_file.rows, from_bytes.rows)
    assert (from_file.horizon_rows, from_file.unparseable) == (
        from_bytes.horizon_rows,
        from_bytes.unparseable,
    )
    assert not opened
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"video_id,url\n" + b"a1,https://youtu.be/a1\n" * 600 + b"\xff,x\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 .* at byte 13813"):
        metadata.scan(bad, "bad.csv", DAY, False)
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_bytes(b'video_id,url\na1,"https://youtu.be/a1\nb2,https://youtu.be/b2\n')
    with pytest.raises(ConfigError, match="never closed"):
        metadata.scan(unclosed, "unclosed.csv", DAY, False)
    blank = tmp_path / "blank.csv"
    blank.write_bytes(b"\n \n")
    with pytest.raises(ConfigError, match="file is empty"):
        metadata.scan(blank, "blank.csv", DAY, False)
    parquet = tmp_path / "horizon.parquet"
    pq.write_table(
        pa.Table.from_pandas(pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)), parquet
    )
    pd.testing.assert_frame_equal(
        metadata.scan(parquet, "horizon.parquet", DAY, True).rows,
        metadata.scan(parquet.read_bytes(), "h.parquet", DAY, True).rows,
    )


# --- reading Parquet ---


def test_parquet_non_string_columns_read_as_the_whole_file_read_them(monkeypatch):
    """A typed column's text depends on the whole column (pandas gives every timestamp a fraction when
    one has it): it is read whole, so small batches do not change it (or the hash)."""
    captured = pa.array(
        [1767225600000000, None, 1767225600000000, 1767225600000001], pa.timestamp("us", "UTC")
    )
    table = pa.table(
        {
            "video_id": ["a1", "b2", "c3", "d4"],
            "url": pa.array(["u1", None, "u3", "u4"]),
            "captured_at": captured,
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=2)
    monkeypatch.setattr(horizon_file, "BATCH_ROWS", 1)
    frame = load(buffer.getvalue(), location="m.parquet", with_ts=True)
    texts = pd.Series(captured.to_pandas()).astype("string").fillna("")
    assert frame["captured_at"].tolist() == texts.tolist()
    assert frame.loc["a1", "captured_at"] == "2026-01-01 00:00:00.000000+00:00"
    assert frame.loc["a1", "source_hash"] == sha("u1|2026-01-01 00:00:00.000000+00:00")
    assert frame.loc["b2", "url"] == ""


# --- the incremental scan: only the rows that can be new or changed ---

KNOWN_SCHEMA = pa.schema([("video_id", pa.string()), ("captured_ns", pa.int64()), ("hash64", pa.int64())])


def known_table(entries):
    """`known` from `(video_id, captured_ns, hash64)` triples (None: null)."""
    columns = list(zip(*entries, strict=True)) if entries else [[], [], []]
    arrays = [pa.array(values, field.type) for values, field in zip(columns, KNOWN_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=KNOWN_SCHEMA)


def index(table):
    """The scan's `known` from a `(video_id, captured_ns, hash64)` table (None stays None)."""
    return None if table is None else known_index.KnownIndex.of(table)


def processed(rows):
    """`known` as the state records it after processing the scan's `rows`: per video the row's instant
    (OLDEST when undated) and the hash64 of its source_hash."""
    instants = latest.instants(rows["captured_ts"]).tolist()
    hashes = metadata.hash64_of_hex(rows["source_hash"]).tolist()
    return known_table(list(zip(rows["video_id"], instants, hashes, strict=True)))


def at(text):
    return int(latest.instants([text])[0])


def h64(key):
    """The hash64 of a hash key by the contract: its sha256's first 8 bytes, big-endian, signed."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


PROCESSED = "2026-02-20T10:00:00Z"  # the instant of the row the state processed, for most videos below
INCREMENTAL = (
    b"video_id,url,captured_at,title\n"
    b"same01,https://youtu.be/same01?old,2026-02-01T10:00:00Z,older with another URL: dropped\n"
    b"same01,https://youtu.be/same01,2026-02-20T10:00:00Z,the processed row unchanged: dropped\n"
    b"edit01,https://youtu.be/edit01?new,2026-02-20T12:00:00+02:00,the processed instant with an edited URL\n"
    b"newer1,https://youtu.be/newer1?a,2026-02-20T10:00:00Z,the processed row\n"
    b"newer1,https://youtu.be/newer1?b,2026-02-28T10:00:00Z,a newer capture: kept and the output\n"
    b"newer1,https://youtu.be/newer1?c,2026-02-10T00:00:00Z,older with another URL\n"
    b'fresh1,https://youtu.be/fresh1?a,2026-01-10T00:00:00Z,"not known,\nold rows only"\n'
    b"fresh1,https://youtu.be/fresh1?b,2026-01-20T00:00:00Z,x\n"
    b"nulln1,https://youtu.be/nulln1,2026-02-01T00:00:00Z,known without an instant\n"
    b"nullh1,https://youtu.be/nullh1,2026-02-01T00:00:00Z,known without a hash\n"
    b"alsoo1,https://youtu.be/alsoo1,2026-01-05T00:00:00Z,unchanged: kept only through also\n"
    b"undat1,https://youtu.be/undat1,,undated and unchanged\n"
    b"undat2,https://youtu.be/undat2,not a date,undated and edited\n"
    b"late01,https://youtu.be/late01,2026-03-02T00:00:00Z,newer but after the run date\n"
)
KNOWN = known_table(
    [
        (None, at(PROCESSED), h64("https://youtu.be/same01")),  # no id: knows nothing (and shifts nothing)
        ("same01", at(PROCESSED), h64("https://youtu.be/same01")),
        ("edit01", at(PROCESSED), h64("https://youtu.be/edit01?old")),
        ("newer1", at(PROCESSED), h64("https://youtu.be/newer1?a")),
        ("nulln1", None, h64("https://youtu.be/nulln1")),
        ("nullh1", at("2026-02-01T00:00:00Z"), None),
        ("alsoo1", at("2026-01-05T00:00:00Z"), h64("https://youtu.be/alsoo1")),
        ("undat1", latest.OLDEST, h64("https://youtu.be/undat1")),
        ("undat2", latest.OLDEST, h64("https://youtu.be/undat2?old")),
        ("late01", at("2026-02-01T00:00:00Z"), h64("https://youtu.be/late01")),
        ("other9", at(PROCESSED), h64("https://youtu.be/other9")),  # not in the file
    ]
)
CHANGED = ["edit01", "fresh1", "newer1", "nullh1", "nulln1", "undat2"]


def incremental(known=KNOWN, with_ts=False, **options):
    return metadata.scan(INCREMENTAL, "m.csv", DAY, with_ts, known=index(known), **options)


def full_rows_of(videos, with_ts=False):
    full = metadata.scan(INCREMENTAL, "m.csv", DAY, with_ts).rows
    return full[full["video_id"].isin(list(videos))].reset_index(drop=True)


def test_known_is_what_the_state_records_for_the_rows_it_processed():
    recorded = processed(full_rows_of(["same01", "alsoo1", "undat1"])).to_pylist()
    expected = [r for r in KNOWN.to_pylist() if r["video_id"] in ("alsoo1", "same01", "undat1")]
    assert recorded == sorted(expected, key=lambda r: r["video_id"])


def test_incremental_scan_keeps_the_new_and_changed_videos_with_their_full_scan_row():
    result = incremental().rows
    assert result["video_id"].tolist() == CHANGED
    pd.testing.assert_frame_equal(result, full_rows_of(CHANGED))
    urls = result.set_index("video_id")["url"]
    assert urls["edit01"] == "https://youtu.be/edit01?new"  # the same instant (spelled otherwise), a new URL
    assert urls["newer1"] == "https://youtu.be/newer1?b"  # a newer capture
    assert urls["fresh1"] == "https://youtu.be/fresh1?b"  # not known: kept though its rows are old


def test_also_pulls_in_known_videos_whose_latest_row_is_unchanged():
    asked = incremental(also=pa.array(["alsoo1", "same01", "not-in-file", None])).rows
    assert asked["video_id"].tolist() == sorted([*CHANGED, "alsoo1", "same01"])
    pd.testing.assert_frame_equal(asked, full_rows_of(asked["video_id"]))
    pd.testing.assert_frame_equal(incremental(also=pa.chunked_array([["alsoo1"], ["same01"]])).rows, asked)
    pd.testing.assert_frame_equal(incremental(also=pa.array([], pa.string())).rows, incremental().rows)


@pytest.mark.parametrize(
    ("cursor", "expected"),
    [
        (("2026-02-10", "https://youtu.be/a1?new"), None),  # the latest row, unchanged
        (("2026-02-15", "https://youtu.be/a1?gone"), None),  # processed a row newer than any in the file
        (("2026-02-10", "https://youtu.be/a1?old"), "https://youtu.be/a1?new"),  # the URL was edited in place
        (("2026-02-05", "https://youtu.be/a1?old"), "https://youtu.be/a1?new"),  # a newer capture
        (
            ("2026-02-01", "https://youtu.be/a1?zzz"),
            "https://youtu.be/a1?new",
        ),  # both: the latest is the output
        ((None, "https://youtu.be/a1?new"), "https://youtu.be/a1?new"),  # no instant: every row
        (("2026-02-10", None), "https://youtu.be/a1?new"),  # no hash: every row
    ],
)
def test_rows_older_than_the_processed_one_are_dropped_whatever_their_url(cursor, expected):
    body = (
        b"video_id,url,captured_at\n"
        b"a1,https://youtu.be/a1?old,2026-02-01\n"  # older than any processed row below, another URL
        b"a1,https://youtu.be/a1?new,2026-02-10\n"
    )
    instant, key = cursor
    known = known_table([("a1", None if instant is None else at(instant), None if key is None else h64(key))])
    result = metadata.scan(body, "m.csv", DAY, False, known=index(known)).rows
    assert result["url"].tolist() == ([] if expected is None else [expected])
    if expected is not None:
        pd.testing.assert_frame_equal(result, metadata.scan(body, "m.csv", DAY, False).rows)


def test_including_captured_at_in_the_hash_changes_the_key_so_every_known_row_at_its_instant_is_kept():
    with_ts = incremental(with_ts=True).rows  # KNOWN hashed the URLs alone
    horizon = ["alsoo1", "edit01", "fresh1", "newer1", "nullh1", "nulln1", "same01", "undat1", "undat2"]
    assert with_ts["video_id"].tolist() == horizon  # late01 is after the run date; nothing else is dropped
    pd.testing.assert_frame_equal(with_ts, full_rows_of(horizon, with_ts=True))
    for flag in (False, True):  # once the state processed every latest row, nothing is new or changed
        assert incremental(processed(full_rows_of(horizon, flag)), with_ts=flag).rows.empty
    mixed = incremental(processed(full_rows_of(horizon, with_ts=True)), with_ts=False).rows
    assert mixed["video_id"].tolist() == horizon  # and the other way round


def test_incremental_scan_without_known_or_with_every_video_also_is_the_full_scan():
    full = metadata.scan(INCREMENTAL, "m.csv", DAY, False).rows
    assert full["video_id"].tolist() == [
        "alsoo1", "edit01", "fresh1", "newer1", "nullh1", "nulln1", "same01", "undat1", "undat2"
    ]  # fmt: skip
    pd.testing.assert_frame_equal(incremental(known=None).rows, full)
    pd.testing.assert_frame_equal(incremental(known=None, also=pa.array(["same01"])).rows, full)
    everything = incremental(also=KNOWN["video_id"]).rows
    pd.testing.assert_frame_equal(everything, full)


def test_known_in_chunks_gives_the_same_scan():
    expected = [incremental().rows, incremental(also=pa.array(["alsoo1", "same01"])).rows]
    chunked = pa.concat_tables([KNOWN.slice(0, 4), KNOWN.slice(4, 3), KNOWN.slice(7)])
    assert chunked["video_id"].num_chunks == 3
    pd.testing.assert_frame_equal(incremental(chunked).rows, expected[0])
    pd.testing.assert_frame_equal(incremental(chunked, also=pa.array(["alsoo1", "same01"])).rows, expected[1])


@pytest.mark.parametrize(
    "keys",
    [
        lambda strings: np.zeros(len(strings), dtype=np.uint64),  # every id collides
        lambda strings: pc.utf8_length(strings).to_numpy().astype(np.uint64),  # some do
    ],
    ids=["all", "by-length"],
)
def test_id_keys_that_collide_only_widen_the_scan(monkeypatch, keys):
    """Colliding videos are compared in full: the scan keeps more of the full scan's rows, never fewer."""
    narrow = incremental().rows
    monkeypatch.setattr(known_index, "_hash64", keys)
    wide = incremental().rows
    full = incremental(known=None).rows
    assert set(narrow["video_id"]) <= set(wide["video_id"])
    pd.testing.assert_frame_equal(wide, full_rows_of(wide["video_id"]))
    assert len(wide) > len(narrow) and len(wide) <= len(full)


def test_an_empty_known_table_knows_nothing():
    """The state's first run passes an empty index: every video is new."""
    full = incremental(known=None).rows
    pd.testing.assert_frame_equal(incremental(known_table([])).rows, full)
    pd.testing.assert_frame_equal(incremental(known_table([]), also=pa.array(["same01"])).rows, full)


def test_a_known_table_without_ids_knows_nothing():
    pd.testing.assert_frame_equal(incremental(known_table([(None, 1, 2)])).rows, incremental(known=None).rows)


def test_a_lesser_row_at_the_processed_instant_does_not_replace_the_processed_row():
    """Two rows at one instant; the state processed the one the full scan picks (the larger
    source_hash). The other row passes the keep test, but it is not the video's latest row: the scan
    must not hand it out as the video's row (whether it then yields the full scan's row or none)."""
    body = (
        b"video_id,url,captured_at\n"
        b"a1,https://youtu.be/a1?x,2026-02-01T00:00:00Z\n"
        b"a1,https://youtu.be/a1?y,2026-02-01T00:00:00Z\n"
    )
    full = metadata.scan(body, "m.csv", DAY, False).rows
    result = metadata.scan(body, "m.csv", DAY, False, known=index(processed(full))).rows
    assert result.empty or result.equals(full), result["url"].tolist()


def test_scan_counts_the_horizon_and_the_unparseable_dates_whatever_it_keeps():
    body = (
        b"video_id,url,captured_at\n"
        b"a1,https://youtu.be/a1,03/10/2026 10:00\n"  # not ISO 8601
        b",https://example.com/x,also bad\n"  # no id: counted nowhere
        b"b2,https://youtu.be/b2, \n"  # blank: undated, not unparseable
        b"c3,https://youtu.be/c3,2026-02-27T10:00:00+02:00\n"
        b"d4,https://youtu.be/d4,yesterday\n"
        b"e5,https://youtu.be/e5,2026-03-05T00:00:00Z\n"  # after the run date: not in the horizon
        b"f6,https://youtu.be/f6,tomorrow\n"
    )
    full = metadata.scan(body, "m.csv", DAY, False, sample=2)
    assert full.rows["video_id"].tolist() == ["a1", "b2", "c3", "d4", "f6"]
    for known in (None, processed(full.rows), known_table([("zz", 0, 0)])):
        result = metadata.scan(body, "m.csv", DAY, False, sample=2, known=index(known))
        assert result.horizon_rows == 5  # kept or not
        assert result.unparseable == 3
        assert result.unparseable_samples.to_dict("list") == {
            "video_id": ["a1", "d4"],
            "captured_at": ["03/10/2026 10:00", "yesterday"],
        }
    assert metadata.scan(body, "m.csv", DAY, False, known=index(processed(full.rows))).rows.empty
    undated = metadata.scan(b"video_id,url,captured_at\na1,u,\nb2,v,03/10/2026\n", "m.csv", DAY, False)
    assert undated.horizon_rows == 2 and undated.unparseable == 1


def test_only_the_kept_rows_get_a_source_hash_and_only_rows_at_the_processed_instant_are_compared(
    monkeypatch,
):
    hashed, compared = [], []
    real_hex, real_64 = metadata._sha256_hex, metadata.hash64

    def counting_hex(keys):
        hashed.extend(keys.to_pylist())
        return real_hex(keys)

    def counting_64(keys):
        compared.extend(keys.to_pylist() if isinstance(keys, pa.Array) else keys)
        return real_64(keys)

    monkeypatch.setattr(metadata, "_sha256_hex", counting_hex)
    monkeypatch.setattr(metadata, "hash64", counting_64)
    incremental()
    assert sorted(hashed) == sorted(
        [
            "https://youtu.be/edit01?new",
            "https://youtu.be/fresh1?a",
            "https://youtu.be/fresh1?b",
            "https://youtu.be/newer1?b",
            "https://youtu.be/nullh1",
            "https://youtu.be/nulln1",
            "https://youtu.be/undat2",
        ]
    )
    assert sorted(compared) == sorted(
        [
            "https://youtu.be/same01",
            "https://youtu.be/edit01?new",
            "https://youtu.be/newer1?a",
            "https://youtu.be/alsoo1",
            "https://youtu.be/undat1",
            "https://youtu.be/undat2",
        ]
    )
    hashed.clear()
    compared.clear()
    full = metadata.scan(INCREMENTAL, "m.csv", DAY, False)
    assert len(hashed) == full.horizon_rows == 13
    assert compared == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "https://youtu.be/a1",
        "https://youtu.be/a1|2026-02-01T10:00:00Z ",
        "https://youtu.be/café|🎬",
        "日本語\u3000ß",
        "nul\x00byte",
    ],
)
def test_hash64_is_the_hash64_of_the_hex_sha256(key):
    digest = hashlib.sha256(key.encode("utf-8"))
    expected = int.from_bytes(digest.digest()[:8], "big", signed=True)
    assert metadata.hash64([key]).dtype == np.int64
    assert metadata.hash64([key]).tolist() == [expected]
    assert metadata.hash64(pa.array([key, key])).tolist() == [expected, expected]
    assert metadata.hash64_of_hex([digest.hexdigest()]).tolist() == [expected]


def test_hash64_has_both_signs_and_a_missing_hex_hash_is_zero():
    keys = [f"k{i}é" for i in range(64)]
    values = metadata.hash64(keys)
    assert (values < 0).any() and (values > 0).any()
    assert metadata.hash64_of_hex([sha(k) for k in keys]).tolist() == values.tolist()
    assert metadata.hash64_of_hex(["ff" * 32, "80" + "0" * 62, "7f" + "f" * 62]).tolist() == [
        -1,
        np.iinfo(np.int64).min,
        np.iinfo(np.int64).max,
    ]
    assert metadata.hash64_of_hex([None, "", "abc"]).tolist() == [0, 0, 0]
    assert metadata.hash64([]).tolist() == [] == metadata.hash64_of_hex([]).tolist()


def test_the_scan_strips_exactly_what_str_strip_strips():
    """The scan strips with Arrow (`utf8_trim_whitespace`); the rule is Python's `str.strip()`."""
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    others = ["\u200b", "\ufeff", "\u180e", "x", "\x00", "\x1b"]
    values = [f"{c}a{c}b{c}" for c in spaces + others]
    assert pc.utf8_trim_whitespace(pa.array(values)).to_pylist() == [v.strip() for v in values]
