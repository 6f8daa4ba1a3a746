"""What the horizon scan compares with: per video a strategy has processed, the instant and the hash64
of the horizon row it last processed, looked up by a 64-bit hash of the video_id.

At tens of millions of known videos this index is what a daily run holds while it scans the horizon,
so it keeps no strings: 8 bytes of key, 8 of instant, 8 of row hash and one flag per video (about 25 MB
per million), sorted by key; a lookup hashes a block of ids on Arrow's buffers and binary-searches.

A key can only widen a scan, never narrow it. Videos whose keys collide (practically never: 64 bits)
are flagged `unset`, so their rows are always kept and compared in full by the delta rules. An id the
index does not hold that collides with one it does is taken for that video, and its row is dropped as
unchanged only if it also has that video's instant and row hash64, the same 64-bit bet the row hash
itself already makes. Every other error the hash could make keeps a row, which costs a lookup, not a
result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HASH_CHUNK = 65_536  # ids hashed at a time, to bound the temporaries


@dataclass(frozen=True)
class KnownIndex:
    """Sorted `keys` (uint64 id hashes) and, at the same positions, `captured_ns`, `hash64` (int64) and
    `unset` (compare in full: a null cursor or a key two videos share)."""

    keys: np.ndarray
    captured_ns: np.ndarray
    hash64: np.ndarray
    unset: np.ndarray

    @classmethod
    def empty(cls) -> KnownIndex:
        return Builder().finish()

    @classmethod
    def of(cls, table: pa.Table) -> KnownIndex:
        """From a table of `video_id, captured_ns, hash64` (a null id is skipped, a null value unsets)."""
        builder = Builder()
        for batch in table.to_batches():
            builder.add(batch.column("video_id"), batch.column("captured_ns"), batch.column("hash64"))
        return builder.finish()

    def __len__(self) -> int:
        return len(self.keys)

    def locate(self, ids: pa.Array) -> np.ndarray:
        """`(len(ids),)` int64: each id's position in the index, -1 if its key is not there."""
        return _locate(self.keys, id_keys(ids))

    def agreeing(self, other: KnownIndex) -> KnownIndex:
        """Videos both indexes know; where they processed different rows the video is unset, so a run of
        several strategies compares it in full."""
        at = _locate(other.keys, self.keys)
        found = at >= 0
        where = at[found]
        captured_ns, hash64 = self.captured_ns[found], self.hash64[found]
        unset = (
            self.unset[found]
            | other.unset[where]
            | (captured_ns != other.captured_ns[where])
            | (hash64 != other.hash64[where])
        )
        return KnownIndex(self.keys[found], captured_ns, hash64, unset)


class Builder:
    """Accumulates an index a batch at a time (the state survey streams its table), sorting once."""

    def __init__(self) -> None:
        self._parts: tuple[list[np.ndarray], ...] = ([], [], [], [])

    def add(self, ids: pa.Array, captured_ns: pa.Array, hash64: pa.Array) -> None:
        if ids.null_count:
            valid = pc.is_valid(ids)
            ids, captured_ns, hash64 = (column.filter(valid) for column in (ids, captured_ns, hash64))
        unset = pc.or_(pc.is_null(captured_ns), pc.is_null(hash64)).to_numpy(zero_copy_only=False)
        for parts, values in zip(
            self._parts,
            (id_keys(ids), _filled(captured_ns), _filled(hash64), np.asarray(unset, dtype=bool)),
            strict=True,
        ):
            parts.append(values)

    def finish(self) -> KnownIndex:
        """One sort by key; each column is joined and reordered in turn, so the peak is the index plus
        the sort order and one column."""
        keys_parts, *value_parts = self._parts
        keys = np.concatenate(keys_parts) if keys_parts else np.zeros(0, np.uint64)
        keys_parts.clear()
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        columns = []
        for parts, dtype in zip(value_parts, (np.int64, np.int64, bool), strict=True):
            joined = np.concatenate(parts) if parts else np.zeros(0, dtype)
            parts.clear()
            columns.append(joined[order])
            del joined
        del order
        captured_ns, hash64, unset = columns
        shared = keys[1:] == keys[:-1]  # one key, two videos (a collision): compare both in full
        unset[1:] |= shared
        unset[:-1] |= shared
        return KnownIndex(keys, captured_ns, hash64, unset)


def key_set(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The sorted keys of `ids`: a membership test that, like the index, can only say yes too often."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    return np.unique(id_keys(ids.drop_null()))


def contains(keys: np.ndarray, ids: pa.Array) -> np.ndarray:
    """`(len(ids),)` bool: which ids have a key in the sorted `keys` of `key_set`."""
    return _locate(keys, id_keys(ids)) >= 0


def _locate(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0 or len(keys) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    by_key = np.argsort(keys)  # sorted probes walk the index in order: far fewer cache misses
    at = np.empty(len(keys), dtype=np.int64)
    at[by_key] = np.searchsorted(sorted_keys, keys[by_key])
    at = np.minimum(at, len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == keys, at, -1)


def _filled(values: pa.Array) -> np.ndarray:
    """int64 values with nulls as 0 (the `unset` flag says which were null)."""
    return pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def id_keys(strings: pa.Array) -> np.ndarray:
    """`(N,)` uint64 key of each id, HASH_CHUNK ids at a time (nulls key as "")."""
    if not (pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type)):
        strings = strings.cast(pa.string())
    keys = np.empty(len(strings), dtype=np.uint64)
    for start in range(0, len(strings), HASH_CHUNK):
        keys[start : start + HASH_CHUNK] = _hash64(strings.slice(start, HASH_CHUNK))
    return keys


def _hash64(strings: pa.Array) -> np.ndarray:
    """A sum of byte * weight(position) plus length * weight, mixed; computed on the Arrow buffers
    without making Python strings."""
    width = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    buffers = strings.buffers()
    offsets = np.frombuffer(buffers[1], dtype=width)[strings.offset : strings.offset + len(strings) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(buffers[2] or b"", dtype=np.uint8)[offsets[0] : offsets[-1]]
    starts = offsets[:-1] - offsets[0]
    lengths = np.diff(offsets)
    weights = _mix64(np.arange(1, int(lengths.max(initial=0)) + 2, dtype=np.uint64))
    position = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        sums = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum(data.astype(np.uint64) * weights[position + 1], out=sums[1:])
        return _mix64(sums[starts + lengths] - sums[starts] + lengths.astype(np.uint64) * weights[0])
