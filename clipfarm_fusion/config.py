"""FusionConfig: every knob of a run in one frozen dataclass, validated once at the edge.

Each field is declared once, with `setting()`: its default, its help, and how the two surfaces that
set it spell it where the spelling derived from the field does not do (a `Flag` for the `run` command,
a `ResourceField` for the Dagster `FusionResource`; None keeps it off that surface). Both surfaces are
generated from these declarations (`cli.run_command`, `defs.resources`), so a new knob is one field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from clipfarm_fusion.core.kernels import DEFAULT_STRATEGIES, STRATEGIES, FusionOptions
from clipfarm_fusion.errors import ConfigError

STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)  # every registered strategy
DEFAULT_ROOT = "clipfarm"
NO_BUCKET = "no bucket: pass --bucket (bucket= from Python) or set CLIPFARM_BUCKET (or S3_BUCKET)"
BUCKET_ENV = ("CLIPFARM_BUCKET", "S3_BUCKET")  # S3_BUCKET: the seed script's spelling
# S3's bucket naming rules (3-63 characters: lowercase letters, digits, dots, hyphens; alphanumeric ends).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
DEFAULT_TEXT_TERMINAL_STATUSES: tuple[str, ...] = ("no_captions", "fail_empty_transcript_terminal")
LOCATION = "PATH|s3://B/KEY"  # the metavar of a setting that is a local path or an S3 URI
SETTING = "clipfarm_fusion.setting"  # the dataclass field metadata key that holds a `Setting`
REQUIRED: Any = MISSING  # the default of a setting every run must be given


class _FieldDefault:
    """The default of a `Flag` or `ResourceField` that is the field's own (dataclasses reserve MISSING)."""

    def __repr__(self) -> str:
        return "FIELD_DEFAULT"


FIELD_DEFAULT: Any = _FieldDefault()


@dataclass(frozen=True)
class Flag:
    """How the `run` command spells a setting, where the spelling derived from the field does not do.

    Derived: `--field-name` (dest `field_name`), a value type from the field's type (unless `to_config`
    parses the string), the field's default, and the setting's help followed by "(default: ...)". A
    bool is a switch away from its default: `--field-name` when it defaults to False; when it defaults to
    True, `--no-field-name` with "do not" before the help."""

    name: str | None = None  # the flag, e.g. "--strategy"; its dest follows from it
    help: str | None = None  # what the command line says instead of the setting's help
    metavar: str | None = None
    minimum: int | None = None  # a whole number, refused below this by argparse (exit 2) before any I/O
    default: Any = FIELD_DEFAULT  # the flag's default, where the command line spells it otherwise ("all")
    shows: str | None = None  # the default as --help shows it, where no value does ("$CLIPFARM_BUCKET")
    to_config: Callable[[Any], Any] | None = None  # parses the flag's string into the field's value
    opposite: str | None = None  # a hidden switch back to the default: a seed script spelling
    aliases: tuple[str, ...] = ()  # the seed script's spellings: accepted, not shown in --help


@dataclass(frozen=True)
class ResourceField:
    """How the Dagster `FusionResource` spells a setting, where the spelling derived from the field does
    not do. Derived: the field's name, its type with lists for tuples (Dagster config has no tuples), its
    default, and the setting's help as a sentence."""

    name: str | None = None
    help: str | None = None  # the launchpad's description instead of the setting's help
    type: Any = None
    default: Any = FIELD_DEFAULT
    # The field's default is this environment variable, read when a run starts (Dagster's EnvVar), so
    # run config that sets any other field of the resource still finds it.
    env: str | None = None


ON_THE_CLI = Flag()  # on the command line, spelled as derived
ON_DAGSTER = ResourceField()  # on the Dagster resource, spelled as derived


@dataclass(frozen=True)
class Setting:
    """A FusionConfig field as the surfaces read it: `setting()` stores the declaration in the field's
    metadata, `settings_of` adds the field's name, resolved type and default."""

    help: str
    cli: Flag | None = ON_THE_CLI
    dagster: ResourceField | None = ON_DAGSTER
    name: str = ""  # these three are the field's, filled in by settings_of
    type: Any = None
    default: Any = None


def setting(
    default: Any, help: str, *, cli: Flag | None = ON_THE_CLI, dagster: ResourceField | None = ON_DAGSTER
) -> Any:
    """A config field declared with everything its surfaces show: the default, the help, and how the
    command line and the Dagster resource spell it (None: not on that surface)."""
    return field(default=default, metadata={SETTING: Setting(help, cli, dagster)})


def settings_of(config_class: type) -> tuple[Setting, ...]:
    """Every field of `config_class` as declared by `setting()`, in declaration order (the order of the
    flags in --help); a field declared otherwise is a TypeError, so none can miss its surfaces."""
    hints = get_type_hints(config_class)
    declared = []
    for each in fields(config_class):
        if SETTING not in each.metadata:
            raise TypeError(f"{config_class.__name__}.{each.name} is not declared with setting()")
        declared.append(
            replace(each.metadata[SETTING], name=each.name, type=hints[each.name], default=each.default)
        )
    return tuple(declared)


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


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """What one run of the job needs to know; the CLI and the Dagster resource both build one of these,
    with the flags and fields generated from the declarations below (listed in the order of --help)."""

    # Which strategies, and where the inputs and the outputs are.
    strategies: tuple[str, ...] = setting(
        DEFAULT_STRATEGIES,
        f"all ({', '.join(DEFAULT_STRATEGIES)}), or one or more of {', '.join(STRATEGY_NAMES)} separated "
        "by commas; every object is read once whatever the number",
        cli=Flag(
            name="--strategy", default="all", to_config=parse_strategies, aliases=("--fusion_strategy",)
        ),
        dagster=None,  # one asset per strategy, chosen by the asset selection
    )
    bucket: str = setting(
        REQUIRED,
        "S3 bucket",
        cli=Flag(shows="$CLIPFARM_BUCKET", to_config=resolve_bucket, aliases=("--s3_bucket",)),
        dagster=ResourceField(
            env=BUCKET_ENV[0],
            help="S3 bucket (default: the environment variable CLIPFARM_BUCKET, read when the run starts).",
        ),
    )
    root: str = setting(DEFAULT_ROOT, "key prefix inside the bucket")
    metadata_uri: str | None = setting(
        None,
        "metadata horizon CSV/Parquet, local path or s3:// URI "
        "(default s3://<bucket>/<root>/metadata/shorts_metadata_horizon.csv)",
        cli=Flag(name="--metadata", metavar=LOCATION, aliases=("--metadata_csv",)),
        dagster=ResourceField(name="metadata"),
    )
    text_state_uri: str | None = setting(
        None,
        "text stage SQLite snapshot (default s3://<bucket>/<root>/state/text_downloader.sqlite)",
        cli=Flag(name="--text-state", metavar=LOCATION, aliases=("--text_state",)),
        dagster=ResourceField(name="text_state"),
    )
    state_dir: Path = setting(
        Path("state"),
        "a local cache of the text stage's snapshot, revalidated each run with one conditional GET. The "
        "state itself is a table in the bucket, so any machine and any --state-dir continue where the "
        "bucket says. A seed-era fusion_<s>.sqlite found here is imported once when the bucket has no state",
        cli=Flag(aliases=("--state_dir",)),
        dagster=ResourceField(  # a temp dir per bucket and root (FusionResource.fusion_config)
            type=str | None,
            default=None,
            help="A local cache of the text stage's snapshot (default: <tmp>/clipfarm_fusion/<bucket>/<root>). "
            "The state is a table in the bucket; this directory holds nothing a run needs to keep.",
        ),
    )

    # How much of the day, cut how, retried how often.
    max_items: int | None = setting(
        None,
        "read the embeddings of at most N videos this run, in video_id order (videos still waiting for "
        "their text cost nothing against the cap); the rest is reported as deferred (default and 0: no cap)",
        cli=Flag(minimum=0, aliases=("--max_items",)),
        dagster=ResourceField(
            help="Fuse at most this many items of the day's delta (None or 0: no cap); the rest stay in the "
            "delta for the next run."
        ),
    )
    shard_size: int = setting(
        2048,
        "vectors per shard, also the batch that bounds memory",
        cli=Flag(minimum=1, aliases=("--shard_size",)),
    )
    # Videos per chunk of the fuse stage (a Dagster step, or a --workers task): a multiple of shard_size,
    # so chunks cut the day where batches end and cost nothing but their staged objects.
    chunk_size: int = setting(
        20_480,
        "videos per chunk: the day's delta is fused a chunk at a time, each chunk by one worker, and "
        "published in one commit; with --max-items the day is one chunk",
        cli=Flag(minimum=1),
        dagster=ResourceField(
            help="Videos per fuse step: the day's delta is cut into chunks of this many, one `fuse_chunk` "
            "step each, which the executor runs side by side."
        ),
    )
    max_fail_retries: int = setting(
        3, "failures before an item becomes fail_terminal", cli=Flag(aliases=("--max_fail_retries",))
    )

    # Text dims and the mask, identity, the gating policy, dates and the text recheck.
    text_dim: int = setting(
        768, "placeholder text dim before a schema lock exists", cli=Flag(minimum=1, aliases=("--text_dim",))
    )
    include_captured_at_in_hash: bool = setting(
        False, "source_hash = sha256(url|captured_at)", cli=Flag(aliases=("--include_captured_at_in_hash",))
    )
    append_text_presence_mask: bool = setting(
        True,
        "append the text-presence mask",
        cli=Flag(
            name="--no-text-mask",
            opposite="--append_text_presence_mask",
            aliases=("--no-append_text_presence_mask", "--no_append_text_presence_mask"),
        ),
    )
    text_terminal_statuses: tuple[str, ...] = setting(
        DEFAULT_TEXT_TERMINAL_STATUSES,
        "text stage statuses that mean no text will ever come (fuse with a placeholder)",
        cli=Flag(
            name="--terminal-text-statuses",
            metavar="A,B",
            help="text stage statuses that mean no text will ever come, so the video is fused with a zero "
            "text vector",
            aliases=("--terminal_text_statuses",),
        ),
    )
    strict_dates: bool = setting(
        False,
        "refuse (exit 2) a metadata file whose captured_at values are not ISO 8601; by default they count "
        "as undated and the summary reports how many",
        dagster=ResourceField(help="Fail the run when captured_at values are not ISO 8601 (else: undated)."),
    )
    # For text the stage never announced; the daily run trusts the stage's news (and keeps late text due
    # for a few runs).
    recheck_text_files: bool = setting(
        False,
        "also upgrade placeholders whose text .npy exists though the text stage never said so: one LIST of "
        "the text prefix (a request per 1,000 files) and a GET per such placeholder; the weekly Dagster job "
        "text_recheck_job does the same",
        cli=Flag(name="--recheck-text"),
        dagster=None,  # the run tag clipfarm/recheck_text (job text_recheck) asks for it
    )

    # Patience, the summary, and the options that are locked in schema.json.
    s3_patience_seconds: float = setting(
        60.0,
        "how long to ride out an S3 outage (connection errors, 5xx, SlowDown) before stopping with exit 6; "
        "an outage never counts as an item failure",
        cli=Flag(name="--s3-patience", metavar="SECONDS"),
        dagster=ResourceField(
            help="How long an S3 outage is ridden out before the run stops (retried, never counted against "
            "an item)."
        ),
    )
    fetch_threads: int = setting(32, "concurrent S3 GETs", cli=None)  # the CLI's suit the machine it runs on
    sample_size: int = setting(
        10,
        "sample video_ids kept per status",
        cli=Flag(
            minimum=1,
            help="sample video_ids (with their errors) kept per status in the summary",
            aliases=("--sample_size",),
        ),
    )
    l2_normalize: bool = setting(
        False,
        "L2-normalise each modality before fusing",
        cli=Flag(
            help="scale each modality to unit L2 norm before fusing (recorded in schema.json; zero stays zero)"
        ),
    )
    projection_uri: str | None = setting(
        None,
        "the .npz artifact of strategy projection, local path or s3:// URI",
        cli=Flag(
            name="--projection",
            metavar=LOCATION,
            help="the .npz artifact of strategy projection (see make-projection); its sha256 is locked in "
            "schema.json",
        ),
        dagster=ResourceField(name="projection"),
    )
    weights: tuple[float, float, float] = setting(
        (1.0, 1.0, 1.0),
        "weighted_pool's video, audio, text weights",
        cli=Flag(
            metavar="V,A,T",
            help="weighted_pool's video,audio,text weights, renormalised over the modalities present, "
            "recorded in schema.json",
        ),
    )
    progress: bool = setting(  # the CLI draws a bar when stderr is a terminal; Dagster shows its own
        False, "report progress as a bar", cli=None, dagster=None
    )

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
