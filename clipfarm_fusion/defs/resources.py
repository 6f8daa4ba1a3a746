"""`FusionResource`: every knob of a run as typed Dagster config, turned into a `FusionConfig`.

Endpoint, region and profile are optional fields so they can be set the Dagster way (launchpad, run
config); left unset they come from the standard AWS chain, as in the CLI, so one deployment setting
serves both. Credentials stay with that chain (keys, profile, instance role) and are never config.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from clipfarm_fusion.config import (
    DEFAULT_ROOT,
    DEFAULT_TEXT_TERMINAL_STATUSES,
    FusionConfig,
    parse_strategies,
)
from clipfarm_fusion.stores import s3io

STRATEGIES_ENV = "CLIPFARM_STRATEGIES"
# The strategies that are assets: the seed's three unless CLIPFARM_STRATEGIES names others
# (comma-separated registry names, e.g. "concat,mean_pool,weighted_pool").
ASSET_STRATEGIES: tuple[str, ...] = parse_strategies(os.environ.get(STRATEGIES_ENV, "all"))


class FusionResource(ConfigurableResource):
    """Where the data lives and how a day is fused; shown and editable in the launchpad."""

    bucket: str = Field(description="S3 bucket; definitions.py reads it from CLIPFARM_BUCKET at launch.")
    root: str = Field(default=DEFAULT_ROOT, description="Key prefix inside the bucket.")
    endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint, e.g. http://minio:9000 (default: the standard AWS chain, AWS_ENDPOINT_URL).",
    )
    region_name: str | None = Field(
        default=None,
        description="AWS region (default: the standard AWS chain, AWS_REGION / AWS_DEFAULT_REGION, "
        "else us-east-1).",
    )
    profile_name: str | None = Field(
        default=None,
        description="AWS profile in ~/.aws/config (default: the standard AWS chain, AWS_PROFILE).",
    )
    metadata: str | None = Field(
        default=None,
        description="Metadata horizon CSV/Parquet, local path or s3:// URI "
        "(default s3://<bucket>/<root>/metadata/shorts_metadata_horizon.csv).",
    )
    text_state: str | None = Field(
        default=None,
        description="Text stage SQLite snapshot (default s3://<bucket>/<root>/state/text_downloader.sqlite).",
    )
    state_dir: str | None = Field(
        default=None,
        description="A local cache of the text stage's snapshot (default: <tmp>/clipfarm_fusion/<bucket>/<root>). "
        "The state is a table in the bucket; this directory holds nothing a run needs to keep.",
    )
    max_items: int | None = Field(
        default=None,
        description="Fuse at most this many items of the day's delta (None or 0: no cap); the rest stay "
        "in the delta for the next run.",
    )
    shard_size: int = Field(default=2048, description="Vectors per shard, also the batch that bounds memory.")
    chunk_size: int = Field(
        default=20_480,
        description="Videos per fuse step: the day's delta is cut into chunks of this many, one "
        "`fuse_chunk` step each, which the executor runs side by side.",
    )
    max_fail_retries: int = Field(default=3, description="Failures before an item becomes fail_terminal.")
    text_dim: int = Field(default=768, description="Placeholder text dim before a schema lock exists.")
    include_captured_at_in_hash: bool = Field(
        default=False, description="source_hash = sha256(url|captured_at)."
    )
    append_text_presence_mask: bool = Field(default=True, description="Append the text-presence mask.")
    l2_normalize: bool = Field(default=False, description="L2-normalise each modality before fusing.")
    projection: str | None = Field(
        default=None, description="The .npz artifact of strategy projection, local path or s3:// URI."
    )
    weights: list[float] = Field(
        default=[1.0, 1.0, 1.0], description="weighted_pool's video, audio, text weights."
    )
    text_terminal_statuses: list[str] = Field(
        default=list(DEFAULT_TEXT_TERMINAL_STATUSES),
        description="Text stage statuses that mean no text will ever come (fuse with a placeholder).",
    )
    fetch_threads: int = Field(default=32, description="Concurrent S3 GETs.")
    s3_patience_seconds: float = Field(
        default=60.0,
        description="How long an S3 outage is ridden out before the run stops (retried, never counted "
        "against an item).",
    )
    strict_dates: bool = Field(
        default=False, description="Fail the run when captured_at values are not ISO 8601 (else: undated)."
    )
    sample_size: int = Field(default=10, description="Sample video_ids kept per status.")
    fail_rate_threshold: float = Field(
        default=0.05,
        description="The fail_rate check warns when fail + fail_terminal reach this share of the delta.",
    )
    pointer_sample_size: int = Field(
        default=256, description="Manifest rows the pointer check loads back from their shards."
    )

    def fusion_config(self, strategies: tuple[str, ...]) -> FusionConfig:
        """The run's config; the cache dir is scoped by bucket and root, so a seed-era working copy of
        another bucket's state can never be imported into this one."""
        state_dir = Path(
            self.state_dir or Path(tempfile.gettempdir(), "clipfarm_fusion", self.bucket, self.root)
        )
        return FusionConfig(
            bucket=self.bucket,
            root=self.root,
            strategies=strategies,
            metadata_uri=self.metadata,
            text_state_uri=self.text_state,
            state_dir=state_dir,
            max_items=self.max_items,
            shard_size=self.shard_size,
            chunk_size=self.chunk_size,
            max_fail_retries=self.max_fail_retries,
            text_dim=self.text_dim,
            include_captured_at_in_hash=self.include_captured_at_in_hash,
            append_text_presence_mask=self.append_text_presence_mask,
            l2_normalize=self.l2_normalize,
            weights=tuple(self.weights),
            projection_uri=self.projection,
            text_terminal_statuses=tuple(self.text_terminal_statuses),
            fetch_threads=self.fetch_threads,
            sample_size=self.sample_size,
            s3_patience_seconds=self.s3_patience_seconds,
            strict_dates=self.strict_dates,
        )

    def client(self):
        """An S3 client from the fields set here, the standard AWS chain for the rest."""
        return s3io.make_client(
            self.fetch_threads,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            profile_name=self.profile_name,
        )
