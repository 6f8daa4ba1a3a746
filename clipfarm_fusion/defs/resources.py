"""`FusionResource`: every knob of a run as typed Dagster config, turned into a `FusionConfig`.

The knobs of the run are generated from `FusionConfig`'s declarations (`setting()` in config.py: the
default, the help, and a `ResourceField` where the resource spells it otherwise), so they are declared
once for the command line and Dagster alike.

Endpoint, region and profile are optional fields so they can be set the Dagster way (launchpad, run
config); left unset they come from the standard AWS chain, as in the CLI, so one deployment setting
serves both. Credentials stay with that chain (keys, profile, instance role) and are never config.
"""

from __future__ import annotations

import os
import tempfile
import typing
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, create_model

from clipfarm_fusion.config import (
    FIELD_DEFAULT,
    REQUIRED,
    FusionConfig,
    Setting,
    parse_strategies,
    settings_of,
)
from clipfarm_fusion.read.checks import FAIL_RATE_THRESHOLD
from clipfarm_fusion.stores import s3io

STRATEGIES_ENV = "CLIPFARM_STRATEGIES"
# The strategies that are assets: the seed's three unless CLIPFARM_STRATEGIES names others
# (comma-separated registry names, e.g. "concat,mean_pool,weighted_pool").
ASSET_STRATEGIES: tuple[str, ...] = parse_strategies(os.environ.get(STRATEGIES_ENV, "all"))


def field_name(each: Setting) -> str:
    """The field's name on the resource: the config's, or as `ResourceField.name` says."""
    return each.dagster.name or each.name


def field_type(each: Setting) -> Any:
    """The field's type as Dagster config can hold it: a list for a tuple, a string for a path."""
    if each.dagster.type is not None:
        return each.dagster.type
    if typing.get_origin(each.type) is tuple:
        return list[typing.get_args(each.type)[0]]
    return str if each.type is Path else each.type


def field_default(each: Setting) -> Any:
    """The config's default (a list for a tuple), or the resource's own where it differs by design; an
    `EnvVar` where the setting names one, so the value is read when a run starts."""
    if each.dagster.env is not None:
        return EnvVar(each.dagster.env)
    if each.dagster.default is not FIELD_DEFAULT:
        return each.dagster.default
    return list(each.default) if isinstance(each.default, tuple) else each.default


def description(each: Setting) -> str:
    """The launchpad's description: the setting's help as a sentence (an identifier such as
    source_hash keeps its lowercase)."""
    if each.dagster.help:
        return each.dagster.help
    text = each.help if "_" in each.help.split(" ", 1)[0] else each.help[:1].upper() + each.help[1:]
    return text if text.endswith(".") else f"{text}."


def resource_fields(config_class: type) -> dict[str, tuple[Any, Any]]:
    """The pydantic field of each setting of `config_class` that is on the resource, for `create_model`."""
    declared = {}
    for each in settings_of(config_class):
        if each.dagster is not None:
            default = field_default(each)
            required = default is REQUIRED  # pydantic spells a required field's default `...`
            info = Field(... if required else default, description=description(each))
            declared[field_name(each)] = (field_type(each), info)
    return declared


def setting_values(resource: ConfigurableResource, config_class: type) -> dict[str, Any]:
    """The config arguments the resource holds: each setting's field value, lists back to tuples."""
    values = {}
    for each in settings_of(config_class):
        if each.dagster is not None:
            value = getattr(resource, field_name(each))
            values[each.name] = tuple(value) if isinstance(value, list) else value
    return values


# FusionConfig's settings as resource fields, generated from their declarations (config.py).
FusionSettings = create_model(
    "FusionSettings", __base__=ConfigurableResource, __module__=__name__, **resource_fields(FusionConfig)
)


class FusionResource(FusionSettings):
    """Where the data lives and how a day is fused; shown and editable in the launchpad. The run's
    settings come from `FusionSettings`; the fields here are the resource's own: how to reach S3 and
    what the checks allow."""

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
    fail_rate_threshold: float = Field(
        default=FAIL_RATE_THRESHOLD,
        description="The fail_rate check warns when fail + fail_terminal reach this share of the delta.",
    )
    pointer_sample_size: int = Field(
        default=256, description="Manifest rows the pointer check loads back from their shards."
    )

    def fusion_config(self, strategies: tuple[str, ...]) -> FusionConfig:
        """The run's config; the cache dir is scoped by bucket and root, so a seed-era working copy of
        another bucket's state can never be imported into this one."""
        values = setting_values(self, FusionConfig)
        values["state_dir"] = Path(
            self.state_dir or Path(tempfile.gettempdir(), "clipfarm_fusion", self.bucket, self.root)
        )
        return FusionConfig(**values, strategies=strategies)

    def client(self):
        """An S3 client from the fields set here, the standard AWS chain for the rest."""
        return s3io.make_client(
            self.fetch_threads,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            profile_name=self.profile_name,
        )
