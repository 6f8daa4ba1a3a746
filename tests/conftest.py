"""Shared fixtures: a real S3 server over HTTP on a free loopback port, a fresh bucket per test, and a
seeded synthetic day. Nothing here patches boto3.

The server is moto unless `--s3=seaweedfs` asks for SeaweedFS, which checks every signature
(tests/seaweedfs.py). Tests marked `s3_backends` are the ones worth a second server (runs and reruns,
concurrent runs, crash points, verify, gc, maintain, a Dagster materialisation, refusals): CI runs the
whole suite on moto, then `pytest --s3=seaweedfs -m s3_backends`.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.devtools.embedded_s3 import moto_server_process
from clipfarm_fusion.stores import s3io

from .postgres import PostgresServer, postgres_bin, postgres_server
from .seaweedfs import seaweedfs_server

_bucket_numbers = itertools.count()
S3_SERVERS = ("moto", "seaweedfs")
# The one identity the session's SeaweedFS accepts; every request of the tests and of the CLI
# subprocesses they start is signed with it (through the AWS env).
SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY = "clipfarm-suite", "seaweed-secret-for-the-suite-0001"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--s3",
        choices=S3_SERVERS,
        default="moto",
        help="the S3 server behind the s3_endpoint fixture (default moto); with seaweedfs, "
        "select the tests meant for it: -m s3_backends",
    )


@pytest.fixture(scope="session")
def s3_endpoint(request: pytest.FixtureRequest) -> str:
    """One S3 server child process for the session (`--s3`); the AWS env points at it throughout."""
    if request.config.getoption("--s3") == "moto":
        with moto_server_process() as endpoint:
            yield endpoint
        return
    with (
        seaweedfs_server(SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY) as endpoint,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", SEAWEEDFS_ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SEAWEEDFS_SECRET_KEY)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield endpoint


@pytest.fixture
def client(s3_endpoint):
    return s3io.make_client(8)


@pytest.fixture
def bucket(client) -> str:
    name = f"test-bucket-{next(_bucket_numbers)}"
    client.create_bucket(Bucket=name)
    return name


@dataclass
class Seeded:
    bucket: str
    root: str
    day: synthetic.SyntheticDay
    objects: dict[str, bytes]
    state_dir: Path

    def config(self, **overrides) -> FusionConfig:
        options = dict(bucket=self.bucket, root=self.root, state_dir=self.state_dir, fetch_threads=8)
        options.update(overrides)
        return FusionConfig(**options)


@pytest.fixture
def seed_day(client, bucket, tmp_path):
    """seed_day(videos=..., mix=..., run_date=...) seeds the test bucket and returns a Seeded."""

    def _seed(
        videos: int = 60, run_date: date = date(2026, 3, 1), root: str = "clipfarm", **kwargs
    ) -> Seeded:
        day, objects = synthetic.make_day(videos, run_date=run_date, **kwargs)
        synthetic.seed(client, bucket, root, day, objects, threads=8)
        return Seeded(bucket, root, day, objects, tmp_path / "state")

    return _seed


def replace_manifest(client, bucket: str, root: str, strategy: str, table) -> None:
    """Overwrite a strategy's published manifest table with `table` (manifest columns): how a test
    tampers with what a run published (duplicate keys, a bad pointer, another width). A commit of
    its own, like any writer's; pyarrow Table or pandas DataFrame."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from clipfarm_fusion.core.layout import Layout
    from clipfarm_fusion.stores import lake, manifest

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    write_deltalake(
        lake.uri(bucket, Layout(root).manifest_table_key(strategy)),
        lake.conform(table, manifest.schema_for(strategy)),
        mode="overwrite",
        storage_options=lake.storage_options(client),
    )


REPO = Path(__file__).resolve().parent.parent
INFRA_INSTANCE = REPO / "infra" / "dagster.yaml"
REQUIRE_POSTGRES_ENV = "CLIPFARM_REQUIRE_POSTGRES"
_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """One PostgreSQL server for the session (tests/postgres.py). Without the binaries the tests that
    need it skip, saying so, unless CLIPFARM_REQUIRE_POSTGRES=1 (CI), which fails them instead."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        reason = "PostgreSQL is not installed (no initdb): apt-get install postgresql"
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_POSTGRES_ENV}=1)")
        pytest.skip(reason)
    with postgres_server(bin_dir) as server:
        yield server


def infra_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME whose dagster.yaml is infra/dagster.yaml itself (a symlink: the file under test)."""
    path.mkdir()
    (path / "dagster.yaml").symlink_to(INFRA_INSTANCE)
    return path


@pytest.fixture
def postgres_dagster_home(postgres, tmp_path, monkeypatch) -> Path:
    """DAGSTER_HOME for the deployment's instance (infra/dagster.yaml: runs, events and pool slots in
    Postgres) on a database of its own; its schema is created here, before any worker opens it."""
    from dagster import DagsterInstance

    database = f"dagster_{next(_database_numbers)}"
    postgres.create_database(database)
    for name, value in postgres.dagster_env(database).items():
        monkeypatch.setenv(name, value)
    home = infra_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    DagsterInstance.get().dispose()
    return home
