"""What a deployment loads: the code location, the instance config, the compose file and `clipfarm-fusion dev`'s helpers."""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from dagster import DagsterInstance

from clipfarm_fusion import dev, s3io, synthetic
from clipfarm_fusion.layout import Layout

REPO = Path(__file__).resolve().parent.parent


def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    return home


def test_definitions_validate_with_no_flags(tmp_path):
    """`[tool.dagster]` in pyproject.toml names the module, so the bare command works from the repo."""
    env = os.environ | {"DAGSTER_HOME": str(dagster_home(tmp_path))}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_instance_queues_runs_and_limits_the_fusion_pool(tmp_path):
    with DagsterInstance.from_config(str(dagster_home(tmp_path))) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "op"
        assert instance.event_log_storage.supports_global_concurrency_limits


def test_compose_runs_minio_postgres_and_dagster():
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"minio", "postgres", "code", "webserver", "daemon"} <= set(services)
    for name in ("code", "webserver", "daemon"):
        env = services[name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env["DAGSTER_POSTGRES_HOST"] == "postgres"
        assert services[name]["build"]["dockerfile"] == "infra/Dockerfile"
    assert "clipfarm_fusion.defs.definitions" in services["code"]["command"]
    assert (REPO / "infra" / services["code"]["build"]["context"]).resolve() == REPO
    instance = yaml.safe_load((REPO / "infra" / "dagster.yaml").read_text())
    assert "postgres_db" in instance["storage"]["postgres"]
    assert instance["concurrency"]["pools"]["default_limit"] == 1
    workspace = yaml.safe_load((REPO / "infra" / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["grpc_server"]["host"] == "code"


def test_dev_seeds_an_empty_bucket_once(client, bucket):
    assert dev.seed_if_empty(client, bucket, "clipfarm", videos=5) == synthetic.make_day(5)[0].run_date
    metadata = Layout("clipfarm").metadata_key()
    client.put_object(Bucket=bucket, Key=metadata, Body=b"video_id,url,captured_at\n")
    assert dev.seed_if_empty(client, bucket, "clipfarm", videos=5) is None
    assert s3io.get_object(client, bucket, metadata).body == b"video_id,url,captured_at\n"


def test_dev_seeds_a_bucket_that_does_not_exist_yet(client):
    assert dev.seed_if_empty(client, "clipfarm-dev-fresh", "clipfarm", videos=5) is not None
    assert s3io.list_keys(client, "clipfarm-dev-fresh", "clipfarm/embeddings/video/")


def test_dev_home_is_a_temporary_copy_unless_dagster_home_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with dev.dagster_home() as home:
        assert (home / "dagster.yaml").read_text() == (REPO / "dagster_home" / "dagster.yaml").read_text()
    assert not home.exists()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dev.dagster_home() as home:
        assert home == tmp_path
