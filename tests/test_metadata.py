"""The metadata horizon: real parsing, id from URL, hashing, as-of filter, dedupe, clear errors."""

import hashlib
import io
from datetime import date

import pandas as pd
import pytest

from clipfarm_fusion import metadata, s3io
from clipfarm_fusion.errors import ConfigError

DAY = date(2026, 3, 1)


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def load(body, location="m.csv", run_date=DAY, with_ts=False):
    return metadata.load_horizon(body, location, run_date, with_ts).set_index("video_id")


CSV = (
    "video_id,url,captured_at,title,extra\n"
    'abc123,https://youtube.com/shorts/abc123,2026-02-27T10:00:00Z,"old, ""title""",1\n'
    'abc123,https://youtube.com/shorts/abc123?x,2026-02-28T10:00:00Z,"line one\nline two 🎬",2\n'
    "late99,https://youtube.com/shorts/late99,2026-03-02T00:00:01Z,later,3\n"
    "nodate,https://youtube.com/shorts/nodate,,no date,4\n"
    "edge00,https://youtube.com/shorts/edge00,2026-03-01T23:59:59+00:00,edge,5\n"
).encode()


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
    csv = metadata.parse_table(frame.to_csv(index=False).encode(), "m.csv")
    assert list(csv.columns) == ["Video_ID", "VIDEO_URL", "Captured_At"]
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    parquet = metadata.parse_table(buffer.getvalue(), "m.parquet")
    assert list(parquet.columns) == ["Video_ID", "VIDEO_URL", "Captured_At"]
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


# --- the one "latest row" rule (clipfarm_fusion/latest.py) as the metadata dedupe uses it ---


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
    from clipfarm_fusion import latest

    instants = latest.instants(
        ["2026-03-01T10:00:00+02:00", "2026-03-01T09:00:00Z", "", "not a date", "2026-03-01", " 2026-03-01 "]
    )
    assert instants[2] == instants[3] == latest.OLDEST
    assert instants[0] < instants[1] and instants[4] == instants[5]
    keys = ["a", "a", "b", "b", "c", "c"]
    assert latest.latest_index([keys], instants).tolist() == [1, 2, 4]  # full tie: the first row
    assert latest.latest_index([keys], instants, [["x", "y", None, "z", "p", "q"]]).tolist() == [1, 3, 5]
    assert latest.latest_index([[]], []).tolist() == []
