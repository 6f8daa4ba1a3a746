"""The `run` command: its flags, the FusionConfig they make, and running one day with its summary printed.

A flag per setting is generated from `FusionConfig`'s declarations (`setting()` in config.py: the
default, the help, and a `Flag` where the command line spells it otherwise); only the flags that are not
settings of the run (the day, the local processes, the summary file) are written out here."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from clipfarm_fusion.cli.argtypes import at_least, comma_list, iso_date, positive, weights
from clipfarm_fusion.cli.exits import EXIT_CONFLICT, EXIT_DRIFT, EXIT_OK
from clipfarm_fusion.config import FIELD_DEFAULT, REQUIRED, FusionConfig, Setting, settings_of
from clipfarm_fusion.run import pipeline

# The seed script's spellings of the flags that are not settings, accepted (not shown in --help) so a
# workflow that called it can switch by changing only the command; a setting's are its `Flag.aliases`.
SEED_ALIASES = {"--run_date": "--run-date", "--summary_json": "--summary-json"}
# How a flag's string becomes its field's value, by the field's type (a str is taken as given, a whole
# number with a lower bound is `Flag.minimum`'s).
VALUE_TYPES: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    Path: Path,
    tuple[str, ...]: comma_list,
    tuple[float, float, float]: weights,
}


def add_run_command(commands) -> None:
    """The `run` subcommand, its flags (in --help order), and the seed's spellings."""
    run = commands.add_parser(
        "run",
        help="fuse one day's delta and publish shards, manifest, schema lock and state",
        description="Fuse every video of the metadata horizon (as of --run-date) whose fused vector is missing "
        "or stale. Exit codes: 0 run completed (item failures are data, see the summary); 2 bad usage or "
        "config; 3 a strategy stopped for schema drift (named on stderr; it wrote nothing, the others "
        "published); 4 a strategy yielded to a concurrent run that committed some of its videos (named on "
        "stderr; the others published): rerun the day; 6 S3 unavailable past --s3-patience, nothing "
        "recorded against any item: retry later; 7 a published store (a seed-era state file or manifest to "
        "import, schema.json) cannot be read: repair it, nothing was written.",
    )
    add_run_arguments(run)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of `run`: the day, a flag per setting of `FusionConfig` (in the order it declares them),
    then how this command runs and reports; `refuse` runs like a day too."""
    parser.add_argument(
        "--run-date",
        type=iso_date,
        default=None,
        help="the day to fuse (YYYY-MM-DD; default: today, UTC); shards land in date=<it>. A date after "
        "today is refused",
    )
    add_setting_flags(parser, FusionConfig)
    parser.add_argument(
        "--workers",
        type=positive,
        default=1,
        help="fuse the chunks in N local processes; the plan and the commit stay in this one. Worth it for "
        "a day of several chunks (a backfill, a re-fusion); on Dagster, CLIPFARM_EXECUTOR does this (default: 1)",
    )
    parser.add_argument(
        "--summary-json", type=Path, default=None, help="also write the run summary as JSON here"
    )
    add_aliases(parser, SEED_ALIASES)


def add_setting_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """A flag for each setting of `config_class` that is on the command line, in declaration order."""
    for each in settings_of(config_class):
        if each.cli is not None:
            add_setting_flag(parser, each)


def add_setting_flag(parser: argparse.ArgumentParser, each: Setting) -> None:
    """The setting's flag as its `Flag` spells it (the rest derived from the field), with its seed
    spellings: a bool is a switch away from its default, anything else takes a value."""
    flag = each.cli
    help_text = flag_help(each).replace("%", "%%")  # argparse %-formats help texts
    if each.type is bool:
        action = parser.add_argument(
            flag_name(each), dest=flag_dest(each), action="store_true", help=help_text
        )
        if flag.opposite:
            parser.add_argument(flag.opposite, dest=action.dest, action="store_false", help=argparse.SUPPRESS)
    else:
        action = parser.add_argument(
            flag_name(each),
            dest=flag_dest(each),
            type=value_type(each),
            default=flag_default(each),
            metavar=flag.metavar,
            help=help_text,
        )
    for alias in flag.aliases:
        parser._option_string_actions[alias] = action  # hidden, as in `add_aliases`


def flag_name(each: Setting) -> str:
    """`--field-name`, `--no-field-name` for a switch that turns a setting off, or as `Flag.name` says."""
    if each.cli.name:
        return each.cli.name
    dashed = each.name.replace("_", "-")
    return f"--no-{dashed}" if turns_off(each) else f"--{dashed}"


def flag_dest(each: Setting) -> str:
    return flag_name(each).removeprefix("--").replace("-", "_")


def turns_off(each: Setting) -> bool:
    """A bool setting that defaults to True: its flag is the switch that turns it off."""
    return each.type is bool and each.default is True


def flag_default(each: Setting) -> Any:
    """The flag's default: the field's, or None for a required setting (`to_config` resolves it)."""
    if each.cli.default is not FIELD_DEFAULT:
        return each.cli.default
    return None if each.default is REQUIRED else each.default


def value_type(each: Setting) -> Callable[[str], Any] | None:
    """How argparse parses the flag's string: not at all when `to_config` does, else by the field's type
    (an optional field by the type it holds when set)."""
    if each.cli.to_config is not None:
        return None
    if each.cli.minimum is not None:
        return at_least(each.cli.minimum)
    kind = held_type(each.type)
    if kind is str:
        return None
    if kind not in VALUE_TYPES:
        raise TypeError(
            f"setting {each.name}: no command-line value type for {kind}; give Flag(to_config=...)"
        )
    return VALUE_TYPES[kind]


def held_type(annotation: Any) -> Any:
    """The type an optional field holds when it is set: int for `int | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def flag_help(each: Setting) -> str:
    """The setting's help as the command line says it: "do not ..." for a switch that turns it off, and a
    value's default at the end, as `shown_default` writes it."""
    text = each.cli.help or each.help
    if each.type is bool:
        return f"do not {text}" if turns_off(each) and not each.cli.help else text
    shown = each.cli.shows or shown_default(flag_default(each))
    return f"{text} (default: {shown})" if shown else text


def shown_default(value: Any) -> str | None:
    """A default as --help writes it: 1,1,1 for a tuple, 60 for 60.0, ./state for a relative path."""
    if value is None:
        return None
    if isinstance(value, tuple | list):
        return ",".join(str(shown_default(part)) for part in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path) and not value.is_absolute():
        return f"./{value}"
    return str(value)


def add_aliases(parser: argparse.ArgumentParser, aliases: dict[str, str]) -> None:
    """Accept each alias as the option it names, without listing it in --help (argparse has no public
    way to hide one spelling of an option, so the alias is registered on the option's own action)."""
    for alias, option in aliases.items():
        parser._option_string_actions[alias] = parser._option_string_actions[option]


def setting_values(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The config arguments the command line holds: each setting's flag value as its field takes it."""
    values: dict[str, Any] = {}
    for each in settings_of(config_class):
        if each.cli is None:
            continue
        value = getattr(args, flag_dest(each))
        if turns_off(each):
            value = not value
        elif each.cli.to_config is not None:
            value = each.cli.to_config(value)
        values[each.name] = value
    return values


def config_from_args(args: argparse.Namespace) -> FusionConfig:
    """The run's config from its flags; a progress bar only on an interactive terminal."""
    return FusionConfig(**setting_values(args, FusionConfig), progress=sys.stderr.isatty())


def progress_bar(enabled: bool):
    """A tqdm bar on an interactive terminal; otherwise the pipeline's periodic log lines suffice."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="video", desc="fusing", dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def run_and_report(
    config: FusionConfig, run_date: date | None, summary_json: Path | None, workers: int = 1
) -> int:
    """Run one day and print its summary table once (stdout); exit 4 when a strategy yielded to a
    concurrent run, else 3 when one stopped on drift (the other strategies publish either way)."""
    run_date = run_date or datetime.now(UTC).date()
    on_progress, close = progress_bar(config.progress)
    try:
        summary = pipeline.run(config, run_date, on_progress=on_progress, workers=workers)
    finally:
        close()
    print(summary.to_table())
    if summary_json:
        summary.write_json(summary_json)
        print(f"summary written to {summary_json}")
    for name, why in summary.stopped.items():
        print(
            f"clipfarm-fusion: schema drift: {name} stopped, nothing of it published: {why}", file=sys.stderr
        )
    for name, why in summary.conflicts.items():
        print(f"clipfarm-fusion: concurrent write: {name} published nothing: {why}", file=sys.stderr)
    if summary.stopped or summary.conflicts:
        published = ", ".join(summary.strategies) or "none"
        print(
            f"clipfarm-fusion: stopped: {', '.join([*summary.stopped, *summary.conflicts])}; "
            f"published: {published}",
            file=sys.stderr,
        )
        return EXIT_CONFLICT if summary.conflicts else EXIT_DRIFT
    return EXIT_OK
