"""Safe `.npy` decoding from bytes: headers parsed without pickle, shapes checked before allocating.

A `.npy` file is data, never code. Every way a file can be wrong becomes an ItemError whose text names
the modality and the cause, so the summary tells the upstream team what to fix.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.lib import format as npy_format

from clipfarm_fusion.errors import ItemError

_NUMERIC_KINDS = {"f", "i", "u"}


def decode_vector(body: bytes, video_id: str, modality: str) -> np.ndarray:
    """`.npy` bytes -> a finite 1-D float32 vector `(D,)`, or ItemError.

    The header's claimed size is checked against the body before anything is allocated, so a
    header claiming a huge shape on a tiny body costs nothing.
    """

    def fail(cause: str) -> ItemError:
        return ItemError(video_id, f"{modality} embedding: {cause}")

    stream = io.BytesIO(body)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
        else:
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
    except Exception as exc:  # noqa: BLE001 - any header problem is the same item failure
        raise fail(f"not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise fail("object array (pickled data is never loaded); store a numeric float array")
    if dtype.kind not in _NUMERIC_KINDS or dtype.subdtype is not None or dtype.names:
        raise fail(f"non-numeric dtype {dtype.str!r}; store float32")
    if len(shape) != 1:
        raise fail(f"{len(shape)}-D array of shape {tuple(shape)}; expected a 1-D vector")
    count = int(shape[0])
    if count == 0:
        raise fail("empty array")
    payload = memoryview(body)[stream.tell() :]
    expected = count * dtype.itemsize
    if len(payload) < expected:
        raise fail(
            f"truncated: header claims {count} values ({expected} bytes), body has {len(payload)} bytes"
        )
    if len(payload) > expected:
        raise fail(f"{len(payload) - expected} trailing bytes after {count} values; file is corrupt")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, reported below
        vector = np.frombuffer(payload, dtype=dtype, count=count).astype(np.float32)
    if not np.isfinite(vector).all():
        raise fail("non-finite values (NaN or inf after casting to float32)")
    return vector
