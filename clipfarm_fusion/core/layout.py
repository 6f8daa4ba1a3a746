"""The one place that knows the storage layout: every S3 key and local path is built here.

Every builder that takes a video_id validates it first, so an id that could escape its prefix
(`/`, `\\`, `..`, control characters, over 256 characters) never becomes part of a key or path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from clipfarm_fusion.errors import ItemError

MODALITIES: tuple[str, ...] = ("video", "audio", "text")
MAX_VIDEO_ID_LEN = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PART = re.compile(r"part-(\d+)\.npz$")


def video_id_problem(video_id: str) -> str | None:
    """Why this id may not be used in a key, or None when it is safe."""
    if not video_id:
        return "empty video_id"
    if len(video_id) > MAX_VIDEO_ID_LEN:
        return f"video_id longer than {MAX_VIDEO_ID_LEN} characters"
    if "/" in video_id or "\\" in video_id:
        return "video_id contains a path separator"
    if ".." in video_id:
        return "video_id contains '..'"
    if _CONTROL.search(video_id):
        return "video_id contains control characters"
    return None


def check_video_id(video_id: str) -> str:
    problem = video_id_problem(video_id)
    if problem:
        raise ItemError(video_id, f"unsafe video_id {video_id[:80]!r}: {problem}; fix it upstream")
    return video_id


def part_number(key: str) -> int | None:
    """The part number of a shard key, or None for anything that is not a shard."""
    match = _PART.search(key)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Layout:
    """Keys under `<root>/` in the bucket and files under the local state dir."""

    root: str

    def embedding_key(self, modality: str, video_id: str) -> str:
        return f"{self.root}/embeddings/{modality}/{check_video_id(video_id)}.npy"

    def embedding_prefix(self, modality: str) -> str:
        return f"{self.root}/embeddings/{modality}/"

    def text_state_key(self) -> str:
        return f"{self.root}/state/text_downloader.sqlite"

    def metadata_key(self) -> str:
        return f"{self.root}/metadata/shorts_metadata_horizon.csv"

    def strategy_prefix(self, strategy: str) -> str:
        return f"{self.root}/fused/{strategy}/"

    def shard_prefix(self, strategy: str, run_date: date) -> str:
        return f"{self.root}/fused/{strategy}/shards/date={run_date.isoformat()}/"

    def shard_key(self, strategy: str, run_date: date, part: int) -> str:
        return f"{self.shard_prefix(strategy, run_date)}part-{part:04d}.npz"

    def manifest_table_key(self, strategy: str) -> str:
        """The manifest's Delta table (a prefix)."""
        return f"{self.root}/fused/{strategy}/manifest"

    def manifest_key(self, strategy: str) -> str:
        """The single-file manifest that seed-era and 0.x runs wrote: imported once, then moved to its
        `.imported` name (`legacy.retire`) so that nothing stale is ever read at this path."""
        return f"{self.root}/fused/{strategy}/fused_manifest.parquet"

    def commit_lease_key(self, strategy: str) -> str:
        """Held by the one commit of the strategy in progress (see `lease`)."""
        return f"{self.root}/fused/{strategy}/commit.lease"

    def snapshot_prefix(self, strategy: str) -> str:
        """Dated single-file copies of the manifest (`snapshot-manifest`); `gc` keeps what they point at."""
        return f"{self.root}/fused/{strategy}/snapshots/"

    def refuse_prefix(self, strategy: str) -> str:
        """Open re-fusion requests (see `stores.refusals`): each names videos to fuse again."""
        return f"{self.root}/fused/{strategy}/refuse/"

    def schema_key(self, strategy: str) -> str:
        return f"{self.root}/fused/{strategy}/schema.json"

    def state_table_key(self, strategy: str) -> str:
        """The state's Delta table (a prefix)."""
        return f"{self.root}/state/fusion_{strategy}"

    def state_mirror_key(self, strategy: str) -> str:
        """The seed-era and 0.x SQLite state file, imported once into the state table."""
        return f"{self.root}/state/fusion_{strategy}.sqlite"

    def staging_prefix(self) -> str:
        """Objects a run's stages hand each other (see `staging`); removed by its commit."""
        return f"{self.root}/staging/"

    def chunk_input_key(self, run_id: str, index: int) -> str:
        return f"{self.staging_prefix()}{run_id}/chunk-{index:05d}.in.parquet"

    def chunk_output_key(self, run_id: str, index: int) -> str:
        return f"{self.staging_prefix()}{run_id}/chunk-{index:05d}.out.parquet"

    def plan_key(self, run_id: str) -> str:
        return f"{self.staging_prefix()}{run_id}/plan.parquet"

    def step_output_key(self, run_id: str, step_key: str, output: str, mapping_key: str | None = None) -> str:
        """A Dagster step's output (a plan or chunk descriptor, as JSON), under the Dagster run's own
        staging folder: the commit leaves it, and the staging sweep removes it a day after the run."""
        name = f"{output}/{mapping_key}" if mapping_key else output
        return f"{self.staging_prefix()}{run_id}/outputs/{step_key}/{name}.json"

    @staticmethod
    def state_path(state_dir: Path, strategy: str) -> Path:
        """A seed-era working copy of the state file under --state-dir."""
        return Path(state_dir) / f"fusion_{strategy}.sqlite"
