"""`FusionConfig` declares each of a run's knobs once (`setting()`), and the CLI's `run` flags and the
Dagster `FusionResource` fields are generated from those declarations. These tests hold the generated
surfaces to them: every setting is on both, under the config's default, unless it is listed below with
the reason it is not; the spellings scripts and run configs use stay put; and a setting added to a
config class appears on both surfaces with nothing else to edit."""

import argparse
import dataclasses
from datetime import date
from pathlib import Path

import pytest
from dagster import ConfigurableResource
from pydantic import create_model

from clipfarm_fusion.cli import run_command
from clipfarm_fusion.cli.main import build_parser
from clipfarm_fusion.config import DEFAULT_STRATEGIES, Flag, FusionConfig, ResourceField, setting, settings_of
from clipfarm_fusion.defs import resources
from clipfarm_fusion.defs.resources import FusionResource

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)

# A setting that stays off a surface, and why; every other setting must be on it.
NOT_ON_THE_CLI = {
    "fetch_threads": "the command line keeps the config's default",
    "progress": "the CLI draws a bar when stderr is a terminal",
}
NOT_ON_DAGSTER = {
    "strategies": "one asset per strategy, chosen by the asset selection",
    "recheck_text_files": "the run tag clipfarm/recheck_text (job text_recheck)",
    "progress": "Dagster shows its own",
}
# The spellings that differ from the config's field name, pinned: scripts and run configs use them.
CLI_DEST = {
    "strategies": "strategy",
    "metadata_uri": "metadata",
    "text_state_uri": "text_state",
    "append_text_presence_mask": "no_text_mask",  # --no-text-mask
    "text_terminal_statuses": "terminal_text_statuses",
    "s3_patience_seconds": "s3_patience",
    "projection_uri": "projection",
    "recheck_text_files": "recheck_text",
}
RESOURCE_FIELD = {"metadata_uri": "metadata", "text_state_uri": "text_state", "projection_uri": "projection"}
DIFFERENT_BY_DESIGN = {"state_dir"}  # ./state for the CLI, a temp dir per bucket and root for Dagster
BUCKET = "some-bucket"


def run_flags() -> dict:
    """The `run` command's dests and their defaults (the first action of a dest sets it, as in argparse)."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a.choices, dict))
    defaults: dict = {}
    for action in subparsers.choices["run"]._actions:
        defaults.setdefault(action.dest, action.default)
    return defaults


def comparable(value):
    return tuple(value) if isinstance(value, list) else value  # Dagster config holds tuples as lists


def test_every_setting_is_on_both_surfaces_or_says_why_not():
    names = [each.name for each in settings_of(FusionConfig)]  # a field without setting() raises here
    assert set(NOT_ON_THE_CLI) | set(NOT_ON_DAGSTER) | set(CLI_DEST) | set(RESOURCE_FIELD) <= set(names)
    flags, fields = run_flags(), FusionResource.model_fields
    for each in settings_of(FusionConfig):
        assert each.help, f"{each.name}: no help"
        assert (each.cli is None) == (each.name in NOT_ON_THE_CLI), f"{each.name}: on the CLI or not?"
        assert (each.dagster is None) == (each.name in NOT_ON_DAGSTER), f"{each.name}: on Dagster or not?"
        dest, field = CLI_DEST.get(each.name, each.name), RESOURCE_FIELD.get(each.name, each.name)
        assert each.cli is None or dest in flags, f"{each.name}: the CLI has no --{dest.replace('_', '-')}"
        assert each.dagster is None or field in fields, f"{each.name}: FusionResource has no field {field}"
        assert each.dagster is None or fields[field].description, f"{each.name}: no launchpad description"


def test_each_surface_defaults_to_the_config_default():
    """A run given nothing but its bucket runs on the declared defaults, from either surface; the
    launchpad shows them too."""
    declared = FusionConfig(bucket=BUCKET)
    from_cli = run_command.config_from_args(build_parser().parse_args(["run", "--bucket", BUCKET]))
    from_dagster = FusionResource(bucket=BUCKET).fusion_config(DEFAULT_STRATEGIES)
    fields = FusionResource.model_fields
    for each in settings_of(FusionConfig):
        if each.name not in NOT_ON_THE_CLI:
            cli_value = getattr(from_cli, each.name)
            assert cli_value == getattr(declared, each.name), f"run: {each.name} = {cli_value!r}"
        if each.name not in NOT_ON_DAGSTER and each.name not in DIFFERENT_BY_DESIGN:
            value = getattr(from_dagster, each.name)
            assert value == getattr(declared, each.name), f"FusionResource: {each.name} = {value!r}"
            shown = fields[RESOURCE_FIELD.get(each.name, each.name)].default
            if each.name != "bucket":  # required: the launchpad asks for it
                assert comparable(shown) == getattr(declared, each.name), (
                    f"launchpad: {each.name} = {shown!r}"
                )


def test_the_seed_spellings_still_parse():
    """The seed script's flags are declared beside their settings now (`Flag.aliases`); a workflow
    that called it still runs by changing only the command."""
    args = build_parser().parse_args(
        [
            "run",
            *("--run_date", "2026-03-01", "--fusion_strategy", "sum_pool", "--s3_bucket", BUCKET),
            *("--metadata_csv", "m.csv", "--text_state", "t.sqlite", "--state_dir", "st"),
            *("--max_items", "5", "--shard_size", "16", "--text_dim", "8", "--max_fail_retries", "1"),
            *("--include_captured_at_in_hash", "--no_append_text_presence_mask", "--sample_size", "3"),
            *("--terminal_text_statuses", "a,b", "--summary_json", "s.json"),
        ]
    )
    config = run_command.config_from_args(args)
    assert (args.run_date, args.summary_json) == (date(2026, 3, 1), Path("s.json"))
    assert dataclasses.asdict(config) | {"progress": False} == dataclasses.asdict(
        FusionConfig(
            bucket=BUCKET,
            strategies=("sum_pool",),
            metadata_uri="m.csv",
            text_state_uri="t.sqlite",
            state_dir=Path("st"),
            max_items=5,
            shard_size=16,
            text_dim=8,
            max_fail_retries=1,
            include_captured_at_in_hash=True,
            append_text_presence_mask=False,
            sample_size=3,
            text_terminal_statuses=("a", "b"),
        )
    )
    again = build_parser().parse_args(["run", "--no-text-mask", "--append_text_presence_mask"])
    assert again.no_text_mask is False, "the seed's --append_text_presence_mask turns the mask back on"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Grown(FusionConfig):
    """FusionConfig with knobs added later, each declared the one way a knob is declared."""

    new_knob: int = setting(5, "a knob added later", cli=Flag(minimum=1))
    new_names: tuple[str, ...] = setting(("a", "b"), "names added later")
    new_switch: bool = setting(True, "use the new switch", dagster=ResourceField(name="switch"))


def test_a_new_setting_appears_on_both_surfaces():
    parser = argparse.ArgumentParser()
    run_command.add_setting_flags(parser, Grown)
    actions = {action.dest: action for action in parser._actions}
    assert actions["new_knob"].default == 5 and actions["new_knob"].help == "a knob added later (default: 5)"
    assert actions["new_names"].help == "names added later (default: a,b)"
    assert actions["no_new_switch"].option_strings == ["--no-new-switch"]
    assert actions["no_new_switch"].help == "do not use the new switch"
    args = parser.parse_args(["--bucket", BUCKET, "--new-knob", "7", "--new-names", "x,y", "--no-new-switch"])
    from_cli = Grown(**run_command.setting_values(args, Grown))
    assert (from_cli.new_knob, from_cli.new_names, from_cli.new_switch) == (7, ("x", "y"), False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--new-knob", "0"])  # Flag(minimum=1): refused by argparse, exit 2

    resource_class = create_model(
        "GrownResource", __base__=ConfigurableResource, **resources.resource_fields(Grown)
    )
    fields = resource_class.model_fields
    assert (fields["new_knob"].default, fields["new_knob"].description) == (5, "A knob added later.")
    assert (fields["new_names"].default, fields["new_names"].annotation) == (["a", "b"], list[str])
    assert fields["switch"].default is True and "new_switch" not in fields
    resource = resource_class(bucket=BUCKET, new_knob=9, new_names=["z"], switch=False)
    values = resources.setting_values(resource, Grown) | {"state_dir": Path("state")}
    from_dagster = Grown(**values, strategies=DEFAULT_STRATEGIES)
    assert (from_dagster.new_knob, from_dagster.new_names, from_dagster.new_switch) == (9, ("z",), False)


def test_a_field_declared_without_setting_is_refused():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Undeclared(FusionConfig):
        forgotten: int = 1

    with pytest.raises(TypeError, match=r"Undeclared\.forgotten is not declared with setting\(\)"):
        settings_of(Undeclared)
