"""Schema evidence: which embedding dims a run saw, as counts per dim, and the verdicts drawn from them.

A run's chunks may be fused in different processes, so each chunk counts the dims it decoded (a few
numbers, whatever the chunk's size) and the commit judges the sum: the verdict is the same however the
day was split. Two verdicts:
- with a schema lock, drift: most FRESH items (new or changed since the last run) of a modality disagree
  with the lock, so the upstream model changed and the strategy stops (retries of items that already
  failed say nothing about the upstream model, so they are not evidence);
- without one (a strategy's first run), the dims to lock: the most common dim per modality.
"""

from __future__ import annotations

import numpy as np

from clipfarm_fusion.errors import SchemaDriftError

DIM_FIELDS = ("video_dim", "audio_dim", "text_dim")
Counts = dict[str, dict[int, int]]  # dim field -> dim -> how many items had it (decoded ones only)


def count(observed: dict[str, np.ndarray]) -> Counts:
    """Counts of the positive dims in `observed` (field -> `(N,)` dims, 0 where absent)."""
    counts: Counts = {}
    for name in DIM_FIELDS:
        values, numbers = np.unique(observed[name][observed[name] > 0], return_counts=True)
        counts[name] = {int(v): int(n) for v, n in zip(values, numbers, strict=True)}
    return counts


def merge(parts: list[Counts]) -> Counts:
    merged: Counts = {name: {} for name in DIM_FIELDS}
    for part in parts:
        for name, dims in part.items():
            for dim, number in dims.items():
                merged[name][int(dim)] = merged[name].get(int(dim), 0) + int(number)
    return merged


def majority(dims: dict[int, int]) -> int | None:
    """The most common dim (ties -> the smaller), or None when nothing was decoded."""
    if not dims:
        return None
    return min(dims, key=lambda dim: (-dims[dim], dim))


def check(locked: tuple[int, int, int], evidence: Counts, key: str, strategy: str) -> None:
    """SchemaDriftError when most fresh decoded vectors of a modality disagree with the lock at `key`."""
    for name, expected in zip(DIM_FIELDS, locked, strict=True):
        dims = {int(d): n for d, n in evidence.get(name, {}).items()}
        seen = sum(dims.values())
        wrong = seen - dims.get(expected, 0)
        if seen and wrong * 2 > seen:
            found = majority({d: n for d, n in dims.items() if d != expected})
            raise SchemaDriftError(
                f"schema drift: {wrong} of {seen} {name.split('_')[0]} embeddings are {found}-d but {key} "
                f"locks {name}={expected}. Nothing was written and no retries were used. If the upstream "
                f"model changed on purpose, run: clipfarm-fusion migrate-schema --strategy {strategy}"
            )
