"""`FusionConfig` declares a run's knobs once; the CLI's `run` flags and the Dagster `FusionResource`
must offer each of them under the same default, so a knob added to one surface cannot be forgotten on
the other (this test fails until it is declared on both, or listed below with the reason it is not)."""

import dataclasses

import pytest

from clipfarm_fusion.cli.main import build_parser
from clipfarm_fusion.config import FusionConfig, parse_strategies
from clipfarm_fusion.defs.resources import FusionResource

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)

# FusionConfig field -> (CLI `run` dest, FusionResource field); None: not on that surface, for the reason given.
SURFACES = {
    "bucket": ("bucket", "bucket"),
    "root": ("root", "root"),
    "strategies": ("strategy", None),  # Dagster: one asset per strategy, chosen by the asset selection
    "metadata_uri": ("metadata", "metadata"),
    "text_state_uri": ("text_state", "text_state"),
    "state_dir": ("state_dir", "state_dir"),
    "max_items": ("max_items", "max_items"),
    "shard_size": ("shard_size", "shard_size"),
    "chunk_size": ("chunk_size", "chunk_size"),
    "max_fail_retries": ("max_fail_retries", "max_fail_retries"),
    "text_dim": ("text_dim", "text_dim"),
    "include_captured_at_in_hash": ("include_captured_at_in_hash", "include_captured_at_in_hash"),
    "append_text_presence_mask": ("no_text_mask", "append_text_presence_mask"),
    "l2_normalize": ("l2_normalize", "l2_normalize"),
    "weights": ("weights", "weights"),
    "projection_uri": ("projection", "projection"),
    "text_terminal_statuses": ("terminal_text_statuses", "text_terminal_statuses"),
    "fetch_threads": (None, "fetch_threads"),  # CLI: sized for the machine it runs on
    "s3_patience_seconds": ("s3_patience", "s3_patience_seconds"),
    "strict_dates": ("strict_dates", "strict_dates"),
    "sample_size": ("sample_size", "sample_size"),
    "recheck_text_files": (
        "recheck_text",
        None,
    ),  # Dagster: the run tag clipfarm/recheck_text (job text_recheck)
    "progress": (None, None),  # the CLI draws a bar when stderr is a terminal; Dagster shows its own
}
# A CLI default spelled otherwise than the config's: what it means as a config value.
CLI_MEANS = {
    "strategies": parse_strategies,  # "all"
    "append_text_presence_mask": lambda no_text_mask: not no_text_mask,  # --no-text-mask
}
DIFFERENT_BY_DESIGN = {"state_dir"}  # ./state for the CLI, a temp dir per bucket and root for Dagster


def run_flags() -> dict:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a.choices, dict))
    defaults: dict = {}
    for action in subparsers.choices["run"]._actions:
        defaults.setdefault(action.dest, action.default)  # argparse: the first action of a dest sets it
    return defaults


def comparable(value):
    return tuple(value) if isinstance(value, list | tuple) else value


def test_every_config_field_is_on_both_surfaces_or_says_why_not():
    fields = [f.name for f in dataclasses.fields(FusionConfig)]
    assert sorted(fields) == sorted(SURFACES)
    flags = run_flags()
    resource = FusionResource.model_fields
    for name, (flag, field) in SURFACES.items():
        assert flag is None or flag in flags, f"{name}: the CLI has no --{flag.replace('_', '-')}"
        assert field is None or field in resource, f"{name}: FusionResource has no field {field}"


def test_each_surface_defaults_to_the_config_default():
    flags = run_flags()
    resource = FusionResource.model_fields
    for field in dataclasses.fields(FusionConfig):
        if field.default is dataclasses.MISSING or field.name in DIFFERENT_BY_DESIGN:
            continue  # bucket is required
        flag, resource_field = SURFACES[field.name]
        if flag is not None:
            meant = CLI_MEANS.get(field.name, lambda value: value)(flags[flag])
            assert comparable(meant) == comparable(field.default), f"--{flag}: {meant!r} != {field.default!r}"
        if resource_field is not None:
            default = resource[resource_field].default
            assert comparable(default) == comparable(field.default), f"{resource_field}: {default!r}"
