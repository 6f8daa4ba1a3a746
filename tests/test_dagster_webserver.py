"""Smoke test of the UI: a real dagster-webserver on the code location and a tmp instance shows the
three assets and the metadata of a partition materialised into that instance."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.resources import FusionResource

REPO = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def webserver(s3_endpoint, tmp_path):
    """(url, DAGSTER_HOME) of a running webserver; its whole process group is killed at teardown."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            *("-m", "clipfarm_fusion.defs.definitions", "-h", "127.0.0.1", "-p", str(port)),
        ],
        env=os.environ | {"DAGSTER_HOME": str(home), "CLIPFARM_BUCKET": "unused-by-the-ui"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", home, process
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def wait_until_up(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "dagster-webserver exited during startup"
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"dagster-webserver not up after {STARTUP_SECONDS}s")


LAST_MATERIALIZATION = """
query ($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        partition
        metadataEntries { label ... on IntMetadataEntry { intValue } ... on PathMetadataEntry { path } }
      }
    }
  }
}
"""


def test_ui_lists_the_assets_and_shows_a_materialisation(webserver, seed_day):
    url, home, process = webserver
    seeded = seed_day(videos=20)
    resources = {
        "fusion": FusionResource(bucket=seeded.bucket, state_dir=str(seeded.state_dir), shard_size=8)
    }
    with DagsterInstance.from_config(str(home)) as instance:
        assert materialize(
            [fuse_embeddings], partition_key="2026-03-01", resources=resources, instance=instance
        ).success

    wait_until_up(url, process)
    nodes = graphql(url, "{ assetNodes { assetKey { path } } }")["assetNodes"]
    assert {"/".join(n["assetKey"]["path"]) for n in nodes} == {"concat", "sum_pool", "max_pool"}
    asset = graphql(url, LAST_MATERIALIZATION, {"key": {"path": ["concat"]}})["assetOrError"]
    [last] = asset["assetMaterializations"]
    entries = {e["label"]: e.get("intValue", e.get("path")) for e in last["metadataEntries"]}
    expected_full = sum(s == "success_full" for s in seeded.day.expected_status().values())
    assert last["partition"] == "2026-03-01"
    assert entries["status/success_full"] == expected_full and entries["delta"] == 20
    assert entries["manifest"] == f"s3://{seeded.bucket}/clipfarm/fused/concat/fused_manifest.parquet"
