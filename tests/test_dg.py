"""`dg`, Dagster's project CLI, on this checkout: `[tool.dg]` in pyproject.toml makes it a project whose
code location is clipfarm_fusion.defs.definitions. Real dg subprocesses, a real moto S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from clipfarm_fusion import read_manifest
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import dev
from clipfarm_fusion.devtools.embedded_s3 import free_port
from clipfarm_fusion.stores import s3io

REPO = Path(__file__).resolve().parent.parent
DG = Path(sys.executable).parent / "dg"
FUSED = {"concat", "sum_pool", "max_pool"}


@pytest.fixture
def home(tmp_path) -> Path:
    """A tmp copy of the repo's dagster_home/ (the instance config), so runs leave the checkout clean."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    return home


def dg(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    if not DG.exists():
        pytest.fail(f"dg (dagster-dg-cli) is not installed in {DG.parent}: pip install -e '.[dev]'")
    return subprocess.run(
        [str(DG), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dg_check_defs(home):
    result = dg("check", "defs", env=os.environ | {"DAGSTER_HOME": str(home)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_dg_list_defs_lists_the_fused_assets_checks_job_and_schedule(home):
    result = dg("list", "defs", "--json", env=os.environ | {"DAGSTER_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    defs = json.loads(result.stdout)
    assert {asset["asset_key"] for asset in defs["assets"]} >= FUSED
    assert {f"{strategy}:manifest_keys_unique" for strategy in FUSED} <= {
        check["key"] for check in defs["asset_checks"]
    }
    assert "fuse_daily" in {job["name"] for job in defs["jobs"]}
    assert "fuse_daily_schedule" in {schedule["name"] for schedule in defs["schedules"]}


def test_dg_launch_materialises_one_partition_of_one_asset(seed_day, client, home, tmp_path):
    seeded = seed_day(videos=40)
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "CLIPFARM_BUCKET": seeded.bucket,
        "TMPDIR": str(tmp_path),  # the resource's default state_dir is under the temp dir
    }
    result = dg("launch", "--assets", "concat", "--partition", "2026-03-01", env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    layout = Layout(seeded.root)
    assert s3io.list_keys(client, seeded.bucket, layout.shard_prefix("concat", date(2026, 3, 1)))
    assert len(read_manifest("concat", bucket=seeded.bucket, root=seeded.root, client=client)) > 0
    assert not s3io.list_keys(client, seeded.bucket, layout.strategy_prefix("sum_pool"))
    with DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey("concat"))
        assert event is not None and event.dagster_event.partition == "2026-03-01"
        assert instance.get_latest_materialization_event(AssetKey("sum_pool")) is None


def wait_for_ui(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "clipfarm-fusion dev exited during startup"
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"no Dagster UI at {url} after {seconds}s")


def test_clipfarm_fusion_dev_serves_the_project_with_dg_dev(tmp_path):
    """From a checkout `clipfarm-fusion dev` runs `dg dev` on the dg project (the wheel case, `dg dev
    -m`, is in test_install.py); Ctrl-C stops it cleanly."""
    assert dev.dg_project_root() == REPO
    command = dev.dg_dev_command("127.0.0.1", 3000)
    assert command[1:4] == ["-m", "dagster_dg_cli.cli", "dev"] and str(REPO) in command

    port = free_port()
    env = os.environ.copy()
    env.pop("DAGSTER_HOME", None)
    for key in ("AWS_ENDPOINT_URL", "CLIPFARM_BUCKET"):
        env.pop(key, None)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "clipfarm-fusion"), "dev", "--port", str(port), "--videos", "20"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_ui(url, process)
        query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
        request = urllib.request.Request(
            f"{url}/graphql", data=query, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            nodes = json.loads(response.read())["data"]["assetNodes"]
        assert {"/".join(node["assetKey"]["path"]) for node in nodes} >= FUSED
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        assert "Using active Python environment" in output  # dg's project mode, with this venv
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not list(tmp_path.iterdir())
