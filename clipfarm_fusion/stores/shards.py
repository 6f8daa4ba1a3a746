"""Shard files: `.npz` with `video_ids`, `vectors (N, F) float32`, `captured_at` and the writing run's
`run_id`, written once, never replaced.

Part numbers continue after the highest existing part of the date. Each PUT carries
`If-None-Match: *`, so a part another writer got to first is skipped, not overwritten. The run id makes
two runs' shards differ even when they fused the same vectors: a PUT whose precondition failed is taken
for our own earlier attempt only when the object holds our very bytes, and a run that yields must never
take another run's shard for its own (and withdraw it).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import date

import numpy as np

from clipfarm_fusion.core.layout import Layout, part_number
from clipfarm_fusion.stores import s3io


def encode(
    video_ids: Sequence[str], vectors: np.ndarray, captured_at: Sequence[str], run_id: str = ""
) -> bytes:
    """Plain numpy arrays only (unicode, float32): loadable with `allow_pickle=False`."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        video_ids=np.asarray(list(video_ids), dtype=np.str_),
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        captured_at=np.asarray(list(captured_at), dtype=np.str_),
        run_id=np.asarray(run_id, dtype=np.str_),
        allow_pickle=False,
    )
    return buffer.getvalue()


def decode(body: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(body), allow_pickle=False) as npz:
        return {name: npz[name] for name in ("video_ids", "vectors", "captured_at")}


def first_free_part(client, bucket: str, layout: Layout, strategy: str, run_date: date) -> int:
    """The part number after the highest of the day's existing shards (one LIST)."""
    keys = s3io.list_keys(client, bucket, layout.shard_prefix(strategy, run_date))
    return max((p for p in map(part_number, keys) if p is not None), default=-1) + 1


class ShardWriter:
    """Writes the shards of one strategy and date from part `first_part` on (the plan found the first
    free part of the day and gives each chunk its own range, so chunks need no LIST of their own)."""

    def __init__(
        self,
        client,
        bucket: str,
        layout: Layout,
        strategy: str,
        run_date: date,
        first_part: int,
        run_id: str,
    ) -> None:
        self.client, self.bucket, self.layout = client, bucket, layout
        self.strategy, self.run_date, self.run_id = strategy, run_date, run_id
        self._next_part = first_part
        self.written: list[str] = []

    def write(self, video_ids: Sequence[str], vectors: np.ndarray, captured_at: Sequence[str]) -> str:
        """PUT one shard under the next free part number; returns its key."""
        body = encode(video_ids, vectors, captured_at, self.run_id)
        while True:
            key = self.layout.shard_key(self.strategy, self.run_date, self._next_part)
            self._next_part += 1
            if s3io.put_if_absent(self.client, self.bucket, key, body) is not None:
                self.written.append(key)
                return key
