"""FusionConfig: every knob of a run in one frozen dataclass, validated once at the edge."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from clipfarm_fusion.core.kernels import DEFAULT_STRATEGIES, STRATEGIES, FusionOptions
from clipfarm_fusion.errors import ConfigError

STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)  # every registered strategy
DEFAULT_ROOT = "clipfarm"
NO_BUCKET = "no bucket: pass --bucket (bucket= from Python) or set CLIPFARM_BUCKET (or S3_BUCKET)"
BUCKET_ENV = ("CLIPFARM_BUCKET", "S3_BUCKET")  # S3_BUCKET: the seed script's spelling
# S3's bucket naming rules (3-63 characters: lowercase letters, digits, dots, hyphens; alphanumeric ends).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
DEFAULT_TEXT_TERMINAL_STATUSES: tuple[str, ...] = ("no_captions", "fail_empty_transcript_terminal")


@dataclass(frozen=True)
class FusionConfig:
    """What one run of the job needs to know; the CLI and the Dagster resource both build one of these."""

    bucket: str
    root: str = DEFAULT_ROOT
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    metadata_uri: str | None = None
    text_state_uri: str | None = None
    state_dir: Path = field(default_factory=lambda: Path("state"))
    max_items: int | None = None
    shard_size: int = 2048
    # Videos per chunk of the fuse stage (a Dagster step, or a --workers task): a multiple of shard_size,
    # so chunks cut the day where batches end and cost nothing but their staged objects.
    chunk_size: int = 20_480
    max_fail_retries: int = 3
    text_dim: int = 768
    include_captured_at_in_hash: bool = False
    append_text_presence_mask: bool = True
    l2_normalize: bool = False
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    projection_uri: str | None = None  # the artifact of strategy `projection`, local or s3://
    text_terminal_statuses: tuple[str, ...] = DEFAULT_TEXT_TERMINAL_STATUSES
    fetch_threads: int = 32
    s3_patience_seconds: float = 60.0  # an outage longer than this stops the run (S3UnavailableError)
    strict_dates: bool = False  # a captured_at that is not ISO 8601 is a ConfigError instead of undated
    sample_size: int = 10
    # Recheck every placeholder whose text file exists, whatever the text stage's row says: one LIST of
    # the text prefix (a request per 1,000 files), a GET per such placeholder. For text the stage never
    # announced; the daily run trusts the stage's news (and keeps late text due for a few runs).
    recheck_text_files: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        check_bucket_name(self.bucket)
        if not self.root or self.root.startswith("/") or ".." in self.root.split("/"):
            raise ConfigError(f"bad --root {self.root!r}: use a relative prefix such as 'clipfarm'")
        unknown = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if unknown or not self.strategies:
            raise ConfigError(f"unknown strategy {unknown}: choose from {', '.join(STRATEGY_NAMES)} or all")
        for name in ("shard_size", "chunk_size", "text_dim", "fetch_threads", "sample_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.s3_patience_seconds < float("inf"):
            raise ConfigError(f"s3_patience_seconds must be 0 or more, got {self.s3_patience_seconds}")
        if self.max_fail_retries < 0:
            raise ConfigError(f"max_fail_retries must be >= 0, got {self.max_fail_retries}")
        if self.max_items is not None and self.max_items < 0:
            raise ConfigError(f"max_items must be 0 (no cap) or more, got {self.max_items}")
        if self.max_items == 0:
            object.__setattr__(self, "max_items", None)
        statuses = tuple(s.strip() for s in self.text_terminal_statuses if s.strip())
        if not statuses:
            raise ConfigError("text_terminal_statuses is empty: name at least one, e.g. no_captions")
        object.__setattr__(self, "text_terminal_statuses", statuses)
        weights = tuple(float(w) for w in self.weights)
        if (
            len(weights) != 3
            or not all(0 <= w < float("inf") for w in weights)
            or weights[0] + weights[1] <= 0
        ):
            raise ConfigError(
                f"bad weights {self.weights}: give three finite, non-negative numbers for video,audio,text "
                "with video + audio > 0"
            )
        object.__setattr__(self, "weights", weights)
        if "projection" in self.strategies and not self.projection_uri:
            raise ConfigError("strategy projection needs an artifact: pass --projection PATH|s3://B/KEY")
        object.__setattr__(self, "root", self.root.strip("/"))
        object.__setattr__(self, "state_dir", Path(self.state_dir))

    @property
    def metadata_location(self) -> str:
        return self.metadata_uri or f"s3://{self.bucket}/{self.root}/metadata/shorts_metadata_horizon.csv"

    @property
    def text_state_location(self) -> str:
        return self.text_state_uri or f"s3://{self.bucket}/{self.root}/state/text_downloader.sqlite"

    @property
    def options(self) -> FusionOptions:
        return FusionOptions(
            mask=self.append_text_presence_mask, l2_normalize=self.l2_normalize, weights=self.weights
        )

    def with_strategies(self, strategies: tuple[str, ...]) -> FusionConfig:
        return replace(self, strategies=strategies)


def parse_strategies(value: str) -> tuple[str, ...]:
    """`all` (the default set: concat, sum_pool, max_pool) or a comma-separated list of registered names."""
    if value == "all":
        return DEFAULT_STRATEGIES
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in STRATEGY_NAMES]
    if unknown or not names:
        raise ConfigError(f"unknown strategy {value!r}: choose from {', '.join(STRATEGY_NAMES)} or all")
    return names


def bucket_from_env() -> str:
    """$CLIPFARM_BUCKET, else the seed script's $S3_BUCKET, else empty."""
    return next((os.environ[name] for name in BUCKET_ENV if os.environ.get(name)), "")


def check_bucket_name(bucket: str) -> str:
    """ConfigError saying what to fix, before a bad name reaches botocore as a traceback."""
    if not bucket:
        raise ConfigError(NO_BUCKET)
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"bad bucket name {bucket!r}: S3 bucket names are 3-63 characters of lowercase letters, digits, "
            "dots and hyphens, starting and ending with a letter or digit; check --bucket or $CLIPFARM_BUCKET"
        )
    return bucket


def resolve_bucket(bucket: str | None) -> str:
    """The bucket given, else $CLIPFARM_BUCKET / $S3_BUCKET, checked; ConfigError saying what to set."""
    return check_bucket_name(bucket or bucket_from_env())
