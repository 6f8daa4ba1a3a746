"""Smoke test of the UI: a real dagster-webserver on the code location and a tmp instance shows the
three assets downstream of the external upstream inputs, and the metadata of a partition materialised
into that instance."""

import contextlib
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
    """(url, DAGSTER_HOME, process) of a running webserver on the dev instance (SQLite)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    # Create the SQLite storages before the server does: two processes migrating a fresh DB at once can
    # both stamp its alembic version, and the code location then fails to load ("more than one head").
    DagsterInstance.from_config(str(home)).dispose()
    with running_webserver(home) as served:
        yield served


@contextlib.contextmanager
def running_webserver(home: Path):
    """A webserver on `home`'s instance (created already); its whole process group is killed on exit."""
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


LOCATIONS = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries { loadStatus locationOrLoadError { __typename ... on PythonError { message } } }
    }
  }
}
"""


def wait_until_up(url: str, process: subprocess.Popen) -> None:
    """Until the code location has loaded: the server answers before that, with an empty asset list."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "dagster-webserver exited during startup"
        try:
            entries = graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
        except (urllib.error.URLError, ConnectionError):
            entries = []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [e["locationOrLoadError"] for e in entries if "message" in e["locationOrLoadError"]]
            assert not errors, errors
            return
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver and its code location not up after {STARTUP_SECONDS}s")


UPSTREAM = {"embeddings/video", "embeddings/audio", "embeddings/text", "metadata_horizon", "text_stage_state"}
ASSET_NODES = "{ assetNodes { assetKey { path } groupName isMaterializable dependencyKeys { path } } }"
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
    nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(url, ASSET_NODES)["assetNodes"]}
    assert {k for k, n in nodes.items() if n["isMaterializable"]} == {"concat", "sum_pool", "max_pool"}
    assert {k for k, n in nodes.items() if n["groupName"] == "upstream"} == UPSTREAM
    assert not any(nodes[k]["isMaterializable"] for k in UPSTREAM)
    for strategy in ("concat", "sum_pool", "max_pool"):
        upstream = {"/".join(d["path"]) for d in nodes[strategy]["dependencyKeys"]}
        assert upstream == UPSTREAM | {strategy}
    asset = graphql(url, LAST_MATERIALIZATION, {"key": {"path": ["concat"]}})["assetOrError"]
    [last] = asset["assetMaterializations"]
    entries = {e["label"]: e.get("intValue", e.get("path")) for e in last["metadataEntries"]}
    expected_full = sum(s == "success_full" for s in seeded.day.expected_status().values())
    assert last["partition"] == "2026-03-01"
    assert entries["status/success_full"] == expected_full and entries["delta"] == 20
    assert entries["manifest"] == f"s3://{seeded.bucket}/clipfarm/fused/concat/manifest"
