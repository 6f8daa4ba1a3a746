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
