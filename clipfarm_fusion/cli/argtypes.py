"""argparse value types shared by every command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import TypeVar

from clipfarm_fusion.errors import ConfigError

T = TypeVar("T")


def iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {value!r} (use YYYY-MM-DD)") from None


def _whole(value: str, least: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {number}")
    return number


def positive(value: str) -> int:
    return _whole(value, 1)


def non_negative(value: str) -> int:
    return _whole(value, 0)


def at_least(least: int) -> Callable[[str], int]:
    """The whole-number type of a flag whose setting declares its lower bound (`Flag.minimum`)."""
    return partial(_whole, least=least)


def comma_list(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of names: {value!r}")
    return names


def weights(value: str) -> tuple[float, float, float]:
    try:
        parsed = tuple(float(part) for part in value.split(","))
    except ValueError:
        parsed = ()
    if len(parsed) != 3:
        raise argparse.ArgumentTypeError(f"not three comma-separated numbers: {value!r} (use e.g. 1,1,0.5)")
    return parsed


def parsed_by(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from one of our parsers, whose ConfigError becomes argparse's usage error
    (exit 2 with the parser's own message), so a value means the same on the command line and in
    Dagster run config."""

    def argtype(value: str) -> T:
        try:
            return parse(value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    argtype.__name__ = parse.__name__  # argparse names the type in "invalid <name> value"
    return argtype
