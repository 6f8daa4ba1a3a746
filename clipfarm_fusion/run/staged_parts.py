"""The chunks' staged outputs as the commit reads them: once for what the whole day decides, then slice by
slice to publish, so the commit holds at most one slice's rows whatever the size of the day.

The first pass reads every chunk's object and keeps its JSON (summaries, dims, drift evidence) and, per
strategy, the ids of its changed state rows: what the drift verdict, the contested check and the cut
into slices need. A day that fits in one slice keeps the rows too, so a normal day reads each object
once; a corpus-sized day (a new strategy, a re-fusion) reads each again when its slice is published.
Chunks are consecutive video_id ranges, so a slice is a run of consecutive chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.run import staging


@dataclass
class Part:
    """One chunk's share of the day: where it is staged, its JSON, and per strategy its changed ids."""

    index: int
    key: str
    meta: dict
    ids: dict[str, pa.Array]


class StagedParts:
    """Every chunk of a run, read once up front (see the module docstring)."""

    def __init__(self, client, config: FusionConfig, results: list, slice_size: int, day_size: int) -> None:
        self.client, self.config, self.slice_size = client, config, slice_size
        self._kept: dict[int, dict[str, pa.Table]] = {}
        self.parts: list[Part] = []
        for result in sorted(results, key=lambda r: r.index):
            tables, meta = self._get(result.key)
            ids = {  # copied out of the staged bytes, which are then freed
                name[len("state/") :]: table["video_id"]
                .combine_chunks()
                .copy_to(pa.default_cpu_memory_manager())
                for name, table in tables.items()
                if name.startswith("state/")
            }
            self.parts.append(Part(result.index, result.key, meta, ids))
            if day_size <= slice_size:
                self._kept[result.index] = tables

    def _get(self, key: str) -> tuple[dict[str, pa.Table], dict]:
        return staging.get(self.client, self.config.bucket, key, self.config.s3_patience_seconds)

    def tables(self, part: Part) -> dict[str, pa.Table]:
        """The chunk's staged tables: kept from the first pass, or read again."""
        kept = self._kept.get(part.index)
        return kept if kept is not None else self._get(part.key)[0]

    def changed_ids(self, name: str) -> pa.Array:
        """Every id this run changes the state of for strategy `name`, across the chunks."""
        return pa.concat_arrays([p.ids[name] for p in self.parts] or [pa.array([], pa.string())])

    def slices(self, name: str) -> list[Slice]:
        """Consecutive chunks in groups of at most `slice_size` changed rows of strategy `name` (a chunk
        larger than that is a group of its own), each with the video_id range it covers: [low, high),
        None for unbounded, so that the ranges tile the whole id space. Chunks without rows for `name`
        join the group before them; with none at all, one slice covers everything."""
        groups: list[list[Part]] = []
        count = 0
        for part in self.parts:
            rows = len(part.ids[name])
            if groups and (not rows or count + rows <= self.slice_size):
                groups[-1].append(part)
                count += rows
            else:
                groups.append([part])
                count = rows
        if not groups:
            return [Slice([], None, None)]
        lows = [None] + [_lowest(group, name) for group in groups[1:]]
        highs = lows[1:] + [None]
        return [Slice(group, low, high) for group, low, high in zip(groups, lows, highs, strict=True)]


@dataclass
class Slice:
    """A run of consecutive chunks and the video_id range [low, high) they cover (None: unbounded)."""

    parts: list[Part]
    low: str | None
    high: str | None

    def holding(self, rows: pa.Table) -> pa.Table:
        """The rows of `rows` whose video_id is in this slice's range."""
        keep = pa.array([True] * rows.num_rows)
        if self.low is not None:
            keep = pc.and_(keep, pc.greater_equal(rows["video_id"], self.low))
        if self.high is not None:
            keep = pc.and_(keep, pc.less(rows["video_id"], self.high))
        return rows.filter(keep)


def _lowest(group: list[Part], name: str) -> str:
    """The smallest id of the group's first chunk with rows for `name` (every group after the first
    starts with one)."""
    return pc.min(group[0].ids[name]).as_py()
