"""Safe .npy decoding: every malformed file is an ItemError naming modality and cause; valid ones decode."""

import io

import numpy as np
import pytest

from clipfarm_fusion.core.npy import decode_vector
from clipfarm_fusion.devtools.synthetic import npy_bytes, object_array_npy
from clipfarm_fusion.errors import ItemError

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)


def decode(body):
    return decode_vector(body, "vid1", "audio")


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (object_array_npy(), "object array"),
        (npy_bytes(np.array([1.0, np.nan], np.float32)), "non-finite"),
        (npy_bytes(np.array([1.0, np.inf])), "non-finite"),
        (npy_bytes(np.array([1e300])), "non-finite"),
        (npy_bytes(np.array([], np.float32)), "empty array"),
        (npy_bytes(np.ones((2, 3), np.float32)), "2-D array"),
        (npy_bytes(np.array(["a", "b"])), "non-numeric"),
        (npy_bytes(np.ones(8, np.float32))[:-5], "truncated"),
        (npy_bytes(np.ones(8, np.float32)) + b"xx", "trailing bytes"),
        (b"not an npy file at all", "not a valid .npy"),
        (b"", "not a valid .npy"),
        (npy_bytes(np.float32(3.0)), "0-D array"),
        (npy_bytes(np.array([True, False])), "non-numeric"),
    ],
)
def test_malformed_files_are_item_errors(body, cause):
    with pytest.raises(ItemError, match=cause) as info:
        decode(body)
    assert info.value.video_id == "vid1"
    assert info.value.message.startswith("audio embedding: ")


def test_huge_claimed_shape_is_rejected_before_allocating():
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    body = b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 16
    with pytest.raises(ItemError, match="truncated"):
        decode(body)


def test_header_that_would_unpickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ItemError, match="object array"):
        decode(object_array_npy(str(marker)))
    assert not marker.exists()


@pytest.mark.parametrize("dtype", [">f4", "<f8", ">f8", "<i4"])
def test_valid_encodings_are_cast_to_float32_exactly(dtype):
    values = np.array([1.5, -2.25, 3.0], dtype=dtype)
    out = decode(npy_bytes(values))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_fortran_order_1d_is_fine():
    values = np.asfortranarray(np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(decode(npy_bytes(values)), values)
