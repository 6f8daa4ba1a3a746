"""The index of known videos: exact lookups by id, collisions compared in full, several strategies."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from clipfarm_fusion.core import known
from clipfarm_fusion.core.known import Builder, KnownIndex

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)

SCHEMA = pa.schema([("video_id", pa.string()), ("captured_ns", pa.int64()), ("hash64", pa.int64())])


def table(entries):
    columns = list(zip(*entries, strict=True)) if entries else [[], [], []]
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, SCHEMA, strict=True)], schema=SCHEMA
    )


def described(index, ids):
    """id -> (captured_ns, hash64), or "unset"; ids the index does not hold are left out."""
    at = index.locate(pa.array(ids, pa.string()))
    return {
        i: "unset" if index.unset[p] else (int(index.captured_ns[p]), int(index.hash64[p]))
        for i, p in zip(ids, at, strict=True)
        if p >= 0
    }


VALUES = ["ab", "cd", "e", "fgh", "", "é", "🎬x", "it's"]
PROBE = ["ab", "cd", "xy", "e", "f", "fgh", "", "abc", "AB", "é", "🎬x", "🎬", "it's", "ab"]


def test_locate_finds_each_held_id_and_no_other():
    index = KnownIndex.of(table([(v, i, -i) for i, v in enumerate(VALUES)]))
    assert len(index) == len(VALUES)
    assert described(index, PROBE) == {v: (i, -i) for i, v in enumerate(VALUES)}
    at = index.locate(pa.array(PROBE))
    assert at.dtype == np.int64 and at.tolist()[-1] == at.tolist()[0]  # the same id, the same place
    assert index.locate(pa.array(PROBE).slice(3, 4)).tolist() == at[3:7].tolist()  # an array with an offset
    assert index.locate(pa.array([], pa.string())).tolist() == []
    assert KnownIndex.empty().locate(pa.array(PROBE)).tolist() == [-1] * len(PROBE)


def test_batches_null_ids_and_null_cursors():
    builder = Builder()
    first = table([("a", 1, 2), (None, 9, 9), ("b", None, 3)])
    builder.add(*first.combine_chunks().to_batches()[0].columns)
    builder.add(*(c.combine_chunks() for c in table([("c", 4, None), ("d", 5, 6)]).columns))
    index = builder.finish()
    assert len(index) == 4  # the row without an id is skipped
    assert described(index, ["a", "b", "c", "d", "z"]) == {
        "a": (1, 2),
        "b": "unset",
        "c": "unset",
        "d": (5, 6),
    }
    assert list(index.keys) == sorted(index.keys)


def test_videos_whose_keys_collide_are_unset(monkeypatch):
    """Both videos of a shared key are compared in full by the scan, whichever the lookup lands on."""
    monkeypatch.setattr(
        known, "_hash64", lambda strings: pc.utf8_length(strings).to_numpy().astype(np.uint64)
    )
    index = KnownIndex.of(table([("ab", 1, 1), ("cd", 2, 2), ("xyz", 3, 3)]))
    assert described(index, ["ab", "cd", "xyz"]) == {"ab": "unset", "cd": "unset", "xyz": (3, 3)}
    assert described(index, ["qq"]) == {"qq": "unset"}  # an unknown id with a held key: compared in full


def test_agreeing_keeps_the_videos_both_know_and_unsets_those_they_processed_differently():
    left = KnownIndex.of(
        table([("same", 1, 1), ("later", 1, 1), ("rehash", 1, 1), ("only-left", 1, 1), ("nul", None, 1)])
    )
    right = KnownIndex.of(
        table([("same", 1, 1), ("later", 2, 1), ("rehash", 1, 2), ("only-right", 1, 1), ("nul", 1, 1)])
    )
    both = left.agreeing(right)
    ids = ["same", "later", "rehash", "only-left", "only-right", "nul"]
    assert described(both, ids) == {"same": (1, 1), "later": "unset", "rehash": "unset", "nul": "unset"}
    assert described(right.agreeing(left), ids) == described(both, ids)
    assert len(left.agreeing(KnownIndex.empty())) == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_key_set_membership(chunked):
    ids = pa.chunked_array([["a", "b"], [None, "c"]]) if chunked else pa.array(["a", "b", None, "c"])
    keys = known.key_set(ids)
    assert known.contains(keys, pa.array(["c", "a", "d", "", "b"])).tolist() == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert known.contains(known.key_set(pa.array([], pa.string())), pa.array(["a"])).tolist() == [False]
