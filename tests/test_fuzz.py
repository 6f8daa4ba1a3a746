"""Fuzz the two parsers that read upstream bytes: no exception but our own may escape them."""

import contextlib
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
