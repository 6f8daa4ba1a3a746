"""What a deployment loads: the code location, the instance config, the compose file and `clipfarm-fusion dev`'s helpers."""

import io
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import yaml
from dagster import DagsterInstance

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import demo_days, dev, package_data
from clipfarm_fusion.stores import s3io

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


def test_compose_runs_the_steps_on_celery_workers_that_share_no_volume():
    """The run in `code` queues its steps in Redis; the workers run them against the same instance
    (Postgres, port included) with the broker the executor names, and share no directory: the step
    outputs are in the bucket."""
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "worker"} <= set(services)
    worker = services["worker"]
    assert worker["command"][:4] == ["dagster-celery", "worker", "start", "-A"]
    assert worker["command"][worker["command"].index("-y") + 1] == "celery.yaml"
    env = worker["environment"]
    assert env is services["code"]["environment"] and env["CLIPFARM_EXECUTOR"].endswith(":-celery}")
    celery = yaml.safe_load((REPO / "infra" / "celery.yaml").read_text())["execution"]["config"]
    assert celery["broker"] == env["CLIPFARM_CELERY_BROKER"] == "redis://redis:6379/0"
    assert env["DAGSTER_POSTGRES_PORT"] == "5432"
    assert "volumes" not in worker and "step-outputs" not in compose["volumes"]
    assert "celery.yaml" in (REPO / "infra" / "Dockerfile").read_text()


def test_helm_values_run_each_step_in_a_pod_of_its_own_with_no_shared_volume():
    values = yaml.safe_load((REPO / "infra" / "k8s-values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "clipfarm_fusion.defs.definitions"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["CLIPFARM_EXECUTOR"] == "k8s" and int(env["CLIPFARM_MAX_CONCURRENT"]) > 1
    assert "volumes" not in deployment and "volumeMounts" not in deployment
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_dev_seeds_the_demo_days_into_an_empty_bucket_once(client, bucket):
    seeded = dev.seed_if_empty(client, bucket, "clipfarm", videos=5)
    assert seeded == demo_days.demo_dates(demo_days.DEFAULT_DAYS)  # consecutive, ending yesterday
    metadata = Layout("clipfarm").metadata_key()
    horizon = pd.read_csv(io.BytesIO(s3io.get_object(client, bucket, metadata).body))
    captured = set(pd.to_datetime(horizon["captured_at"], utc=True).dt.date)
    assert set(seeded) <= captured  # one horizon holding every day's rows
    client.put_object(Bucket=bucket, Key=metadata, Body=b"video_id,url,captured_at\n")
    assert dev.seed_if_empty(client, bucket, "clipfarm", videos=5) == []
    assert s3io.get_object(client, bucket, metadata).body == b"video_id,url,captured_at\n"


def test_dev_seeds_a_bucket_that_does_not_exist_yet(client):
    assert dev.seed_if_empty(client, "clipfarm-dev-fresh", "clipfarm", videos=5, days=1)
    assert s3io.list_keys(client, "clipfarm-dev-fresh", "clipfarm/embeddings/video/")


def test_dev_home_is_a_temporary_copy_unless_dagster_home_is_set(monkeypatch, tmp_path):
    """The copy comes from the package data, which is dagster_home/dagster.yaml itself (one source)."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    repo_yaml = (REPO / "dagster_home" / "dagster.yaml").read_text()
    assert package_data.dagster_yaml() == repo_yaml
    with dev.dagster_home() as home:
        assert (home / "dagster.yaml").read_text() == repo_yaml
        assert [path.name for path in home.iterdir()] == ["dagster.yaml"]
    assert not home.exists()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dev.dagster_home() as home:
        assert home == tmp_path


def test_image_installs_a_wheel_built_from_the_package_sources():
    """infra/Dockerfile builds a wheel and installs it (no editable checkout); its first stage copies
    every folder pyproject.toml maps into the package, so the package data is in the wheel."""
    lines = [line.strip() for line in (REPO / "infra" / "Dockerfile").read_text().splitlines()]
    runs = [line for line in lines if line.startswith("RUN ")]
    assert any("pip wheel" in run and "--no-deps" in run for run in runs)
    installs = [run for run in runs if "pip install" in run]
    assert installs and all(" -e " not in run and "clipfarm_fusion-*.whl" in run for run in installs)
    copied = {
        source.rstrip("/").split("/")[0]
        for line in lines
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {"pyproject.toml", "README.md", "clipfarm_fusion", *setuptools["package-dir"].values()} <= copied
