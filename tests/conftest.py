"""Shared fixtures: a real moto S3 server over HTTP on a free loopback port, a fresh bucket per test,
and a seeded synthetic day. Nothing here patches boto3."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.devtools.embedded_s3 import moto_server_process
from clipfarm_fusion.stores import s3io

_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """One moto server child process for the session; the AWS env points at it throughout."""
    with moto_server_process() as endpoint:
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
