"""Fuzz the two parsers that read upstream bytes: no exception but our own may escape them."""

import contextlib
import hashlib
import io
from datetime import date

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from clipfarm_fusion import metadata
from clipfarm_fusion.errors import ConfigError, ItemError
from clipfarm_fusion.npy import decode_vector
from clipfarm_fusion.synthetic import npy_bytes

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_item_error(body: bytes):
    try:
        vector = decode_vector(body, "v", "text")
    except ItemError as exc:
        assert exc.message.startswith("text embedding: ")
        return None
    assert vector.dtype == np.float32 and vector.ndim == 1 and vector.size > 0
    assert np.isfinite(vector).all()
    return vector


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(body):
    decode_or_item_error(body)


@FUZZ
@given(st.binary(max_size=256), st.integers(0, 200), st.binary(max_size=64))
def test_mutated_valid_files(noise, position, tail):
    body = bytearray(npy_bytes(np.arange(16, dtype=np.float32)))
    body[position : position + len(noise)] = noise
    decode_or_item_error(bytes(body) + tail)


@FUZZ
@given(
    hnp.arrays(
        dtype=st.one_of(
            hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.boolean_dtypes(), hnp.complex_number_dtypes()
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=8),
    )
)
def test_any_numeric_array(array):
    vector = decode_or_item_error(npy_bytes(array))
    if vector is not None:
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(vector, array.astype(np.float32))


@FUZZ
@given(st.binary(max_size=1024))
def test_metadata_random_bytes(body):
    with contextlib.suppress(ConfigError):
        metadata.load_horizon(body, "fuzz.csv", date(2026, 3, 1), False)


CELL = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@FUZZ
@given(
    st.lists(st.tuples(CELL, CELL, CELL, CELL), max_size=20),
    st.sampled_from(
        [
            ["video_id", "url", "captured_at", "title"],
            ["video_url", "captured_at", "x", "y"],
            ["Video_ID", "thumbnail_url", "Page_URL", "Captured_At"],
            ["VIDEO_URL", "url", "captured_at", "title"],
            ["a", "b", "c", "d"],
        ]
    ),
)
def test_metadata_random_tables(rows, header):
    import pandas as pd

    body = pd.DataFrame(rows, columns=header).to_csv(index=False).encode()
    try:
        frame = metadata.load_horizon(body, "fuzz.csv", date(2026, 3, 1), True)
    except ConfigError:
        return
    assert frame["video_id"].is_unique
    assert all(len(h) == 64 for h in frame["source_hash"])


URL_CELL = st.one_of(
    CELL,
    st.builds(
        lambda pad, vid, tail: f"{pad}https://youtu.be/{vid}{tail}",
        st.sampled_from(["", " ", "\t", " \u3000"]),
        st.text(alphabet="abcdefghAB01_-", min_size=6, max_size=12),
        st.sampled_from(["", " ", "?t=1 ", "\u00a0"]),
    ),
)
DATE_CELL = st.one_of(
    CELL,
    st.sampled_from(
        ["2026-02-01", " 2026-02-01T10:00:00Z", "2026-02-01T12:00:00+02:00 ", "2026-02-01T10:00:00Z"]
    ),
)


@FUZZ
@given(
    st.lists(st.tuples(CELL, URL_CELL, URL_CELL, DATE_CELL), max_size=20),
    st.sampled_from(
        [
            ["Video_ID", "thumbnail_url", "Page_URL", "Captured_At"],
            ["VIDEO_ID", "YouTube_URL", "URL", "captured_at"],
            ["title", "url", "Video_Url", "CAPTURED_AT"],
        ]
    ),
    st.booleans(),
)
def test_metadata_hash_and_id_follow_the_text_stage_rules(rows, header, with_captured_at):
    """Against a plain-Python reading of the contract, over what pandas reads back from the file."""
    import pandas as pd

    body = pd.DataFrame(rows, columns=header).to_csv(index=False).encode()
    raw = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    lowered = [c.lower() for c in raw.columns]
    url_col = next(
        raw.columns[lowered.index(n)] for n in ("video_url", "url", "youtube_url", "page_url") if n in lowered
    )
    id_col = raw.columns[lowered.index("video_id")] if "video_id" in lowered else None
    date_col = raw.columns[lowered.index("captured_at")]
    expected: dict[str, set[str]] = {}
    for _, row in raw.iterrows():
        url = row[url_col].strip()
        video_id = (row[id_col].strip() if id_col else "") or metadata.video_id_from_url(url) or ""
        key = f"{url}|{row[date_col]}" if with_captured_at else url
        if video_id:
            expected.setdefault(video_id, set()).add(hashlib.sha256(key.encode()).hexdigest())
    frame = metadata.load_horizon(body, "fuzz.csv", date(2262, 4, 10), with_captured_at)  # keeps every date
    assert frame["video_id"].is_unique
    assert set(frame["video_id"]) == set(expected)
    for video_id, source_hash in zip(frame["video_id"], frame["source_hash"], strict=True):
        assert source_hash in expected[video_id]
