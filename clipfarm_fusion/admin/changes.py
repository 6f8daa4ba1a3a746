"""Change detection: which fused videos were made from an input object that has changed since.

An upstream stage may write a new embedding under the same key (a new model with the same dims): no
run would notice, since the key, the horizon row and the dims are all the same. Every manifest row
records the ETag of each input as it was read (`manifest.LINEAGE`); this module LISTs the embedding
prefixes (one request per 1,000 keys, key ranges side by side) and compares. What changed becomes a
re-fusion request (`stores.refusals`, reason `changed_upstream`), which the next run of the strategy
fuses under its own reason in the summary.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from clipfarm_fusion.admin import refusal
from clipfarm_fusion.core.layout import MODALITIES, Layout
from clipfarm_fusion.read.vectors import latest_per_video, load_manifest
from clipfarm_fusion.stores import refusals, s3_faults, s3io

RANGE_KEYS = 50_000  # manifest videos per listed key range: a range is about 50 LIST requests


@dataclass
class Changes:
    """What a detection found: the changed videos, per modality how many, and what it cost."""

    strategy: str
    videos: int = 0  # latest manifest rows compared
    changed: list[str] = field(default_factory=list)
    by_modality: dict[str, int] = field(default_factory=dict)
    gone: int = 0  # videos an input of which is no longer there (not re-fused: nothing to fuse from)
    unrecorded: int = 0  # rows fused before lineage: nothing to compare with
    keys_listed: int = 0
    list_requests: int = 0
    seconds: float = 0.0
    request_key: str | None = None

    def lines(self) -> list[str]:
        per_million = self.seconds / max(self.keys_listed, 1) * 1e6
        lines = [
            f"{self.strategy}: compared {self.videos} videos' inputs with {self.keys_listed} listed objects "
            f"({self.list_requests} LIST requests, {self.seconds:.1f} s, {per_million:.0f} s per million keys)",
            f"  changed upstream: {len(self.changed)} videos "
            + (", ".join(f"{m} {n}" for m, n in self.by_modality.items() if n) or "(none)"),
        ]
        if self.gone:
            lines.append(f"  {self.gone} videos have an input that is gone (left as they are)")
        if self.unrecorded:
            lines.append(f"  {self.unrecorded} videos were fused before lineage was recorded (not compared)")
        if self.request_key:
            lines.append(
                f"  re-fusion requested: s3://…/{self.request_key}; the next run of {self.strategy} fuses them "
                f"(or now: clipfarm-fusion refuse --strategy {self.strategy} --changed)"
            )
        return lines


def ranges(keys: list[str], per_range: int = RANGE_KEYS) -> list[tuple[str | None, str | None]]:
    """`(after, until]` bounds that cut sorted `keys` into ranges of about `per_range` keys: the first
    starts at the beginning and the last runs to the end, so together they cover every key of the
    prefix, each once, whatever else it holds."""
    bounds = keys[per_range - 1 :: per_range][: -1 if len(keys) % per_range == 0 else None]
    edges: list[str | None] = [None, *bounds, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


def detect(client, bucket: str, root: str, strategy: str, threads: int = 8, request: bool = True) -> Changes:
    """Compare the recorded input ETags of the strategy's latest rows with a LIST of the inputs; with
    `request`, make the changed videos a `changed_upstream` re-fusion request."""
    started = time.monotonic()
    layout = Layout(root.strip("/"))
    rows = latest_per_video(load_manifest(client, bucket, root, strategy))
    found = Changes(strategy, videos=rows.num_rows)
    ids = rows["video_id"].to_pylist()
    changed = np.zeros(rows.num_rows, dtype=bool)
    gone = np.zeros(rows.num_rows, dtype=bool)
    recorded_any = np.zeros(rows.num_rows, dtype=bool)
    for modality in MODALITIES:
        recorded = rows[f"{modality}_etag"].to_numpy(zero_copy_only=False)
        keys = rows[f"{modality}_emb_key"].to_numpy(zero_copy_only=False)
        listed = _listing(client, bucket, layout.embedding_prefix(modality), sorted(keys), threads, found)
        now = np.array([listed.get(k) for k in keys], dtype=object)
        has = _present(recorded)
        recorded_any |= has
        differs = has & _present(now) & (now != recorded)
        gone |= has & ~_present(now)
        found.by_modality[modality] = int(np.count_nonzero(differs))
        changed |= differs
    found.changed = [ids[i] for i in np.flatnonzero(changed)]
    found.gone = int(np.count_nonzero(gone & ~changed))
    found.unrecorded = int(np.count_nonzero(~recorded_any))
    if request and found.changed:
        made, _ = refusal.make_request(
            client, bucket, root, strategy, found.changed, refusals.CHANGED_UPSTREAM
        )
        found.request_key = made.key
    found.seconds = time.monotonic() - started
    return found


def _present(values: np.ndarray) -> np.ndarray:
    """Per value, whether it is set (an ETag), not None."""
    return np.array([v is not None for v in values], dtype=bool)


def _listing(
    client, bucket: str, prefix: str, keys: list[str], threads: int, found: Changes
) -> dict[str, str]:
    """key -> ETag of every object under `prefix`, its key ranges (cut at the sorted `keys`) listed
    side by side."""
    spans = ranges(keys)

    def one(span: tuple[str | None, str | None]) -> tuple[dict[str, str], int]:
        return s3_faults.with_patience(
            lambda: s3io.list_etags(client, bucket, prefix, *span), f"listing s3://{bucket}/{prefix}", 60.0
        )

    listed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(spans)))) as pool:
        for part, requests in pool.map(one, spans):
            listed.update(part)
            found.list_requests += requests
    found.keys_listed += len(listed)
    return listed
