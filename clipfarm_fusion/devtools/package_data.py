"""The data files the package ships, read with importlib.resources so they work from a wheel too.

The sources stay where a checkout uses them: `sql/state.sql` and `dagster_home/dagster.yaml` (the
DAGSTER_HOME users point at). pyproject.toml maps those folders into the package as
`clipfarm_fusion.sql` and `clipfarm_fusion.dagster_home`, for a wheel and for `pip install -e` alike.
"""

from __future__ import annotations

from importlib.resources import files


def _read(package: str, name: str) -> str:
    return files(package).joinpath(name).read_text(encoding="utf-8")


def state_ddl() -> str:
    """The DDL of the fusion state DB (sql/state.sql)."""
    return _read("clipfarm_fusion.sql", "state.sql")


def dagster_yaml() -> str:
    """The Dagster instance config for `dagster dev` / `clipfarm-fusion dev` (dagster_home/dagster.yaml)."""
    return _read("clipfarm_fusion.dagster_home", "dagster.yaml")
