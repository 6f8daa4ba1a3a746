"""The package works from a built wheel, outside the checkout: data files ship as package data, and
the commands that need an optional extra say which one when it is missing. Real builds and
subprocesses, nothing patched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def copy_sources(target: Path) -> None:
    """What a build reads: pyproject.toml, the README, the package and the folders pyproject maps into
    it (their files only: dagster_home/ may hold a Dagster instance's runtime folders)."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, target)
    shutil.copytree(
        REPO / "clipfarm_fusion", target / "clipfarm_fusion", ignore=shutil.ignore_patterns("__pycache__")
    )
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in setuptools["package-dir"].values():
        (target / folder).mkdir()
        for path in (REPO / folder).iterdir():
            if path.is_file():
                shutil.copy(path, target / folder)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of the repo, built from a copy of its sources so the checkout gets no build/ folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    copy_sources(source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (tmp / "dist").glob("clipfarm_fusion-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a plain folder (no deps: the running venv provides them)."""
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def run_python(args: list[str], cwd: Path, pythonpath: list[Path], timeout: float = 120):
    env = os.environ | {"PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def checkout_subpackages() -> set[str]:
    return {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "clipfarm_fusion").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_wheel_holds_every_subpackage_and_the_data_files(wheel):
    """pyproject.toml lists the packages explicitly (for the sql/ and dagster_home/ mapping): a new
    subpackage of the checkout that is not listed there would be missing from the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {name.rsplit("/", 1)[0].replace("/", ".") for name in names if name.endswith("/__init__.py")}
    assert checkout_subpackages() <= packages, "add the missing packages to [tool.setuptools] packages"
    assert {"clipfarm_fusion/sql/state.sql", "clipfarm_fusion/dagster_home/dagster.yaml"} <= names
    assert not [name for name in names if name.startswith(("sql/", "dagster_home/", "tests/"))]


def test_installed_wheel_runs_from_an_empty_directory(site, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = textwrap.dedent(
        f"""
        from pathlib import Path
        import clipfarm_fusion
        from clipfarm_fusion.devtools import dev
        from clipfarm_fusion.devtools import package_data

        site = Path({str(site)!r}).resolve()
        assert Path(clipfarm_fusion.__file__).resolve().is_relative_to(site), clipfarm_fusion.__file__
        assert package_data.state_ddl() == {(REPO / "sql" / "state.sql").read_text()!r}
        assert package_data.dagster_yaml() == {(REPO / "dagster_home" / "dagster.yaml").read_text()!r}
        # No pyproject next to the installed package: `clipfarm-fusion dev` gives dg the module.
        assert dev.dg_project_root() is None
        assert dev.dg_dev_command("127.0.0.1", 3000)[-2:] == ["-m", "clipfarm_fusion.defs.definitions"]
        with dev.dagster_home() as home:
            assert (home / "dagster.yaml").read_text() == package_data.dagster_yaml()
        print("ok")
        """
    )
    result = run_python(["-c", probe], cwd=empty, pythonpath=[site])
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    result = run_python(["-m", "clipfarm_fusion.cli.main", "--help"], cwd=empty, pythonpath=[site])
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "run" in result.stdout
    assert not list(empty.iterdir())


def unimportable(tmp_path: Path, module: str) -> Path:
    """A PYTHONPATH entry that shadows `module` with a package whose import fails, as if not installed."""
    shadow = tmp_path / f"without-{module}"
    (shadow / module).mkdir(parents=True)
    (shadow / module / "__init__.py").write_text(f"raise ImportError({f'No module named {module!r}'!r})\n")
    return shadow


@pytest.mark.parametrize("command", ["demo", "dev"])
def test_without_moto_demo_and_dev_exit_2_naming_the_demo_extra(site, tmp_path, command):
    result = run_python(
        ["-m", "clipfarm_fusion.cli.main", command],
        cwd=tmp_path,
        pythonpath=[unimportable(tmp_path, "moto"), site],
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'clipfarm-fusion[demo]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "clipfarm-demo").exists()


def test_without_moto_the_console_script_exits_2_too(tmp_path):
    script = Path(sys.executable).parent / "clipfarm-fusion"
    env = os.environ | {"PYTHONPATH": str(unimportable(tmp_path, "moto"))}
    result = subprocess.run(
        [str(script), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "clipfarm-fusion[demo]" in result.stderr


def test_without_dg_dev_exits_2_naming_the_dev_extra(site, tmp_path):
    result = run_python(
        ["-m", "clipfarm_fusion.cli.main", "dev"],
        cwd=tmp_path,
        pythonpath=[unimportable(tmp_path, "dagster_dg_cli"), site],
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'clipfarm-fusion[dev]'" in result.stderr
    assert "Traceback" not in result.stderr
