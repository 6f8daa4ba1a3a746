"""The Celery recipe of docs/dagster.md, run as a reader runs it: the block's commands in bash, from a
fresh directory whose `dagster_home/` holds only the repo's dagster.yaml, against a seeded bucket.

Only the Redis port differs (6379 becomes a free port, so the test never meets another Redis); every
other line is the document's. The recipe must publish the day: every strategy's manifest holds the
videos the synthetic day fuses.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clipfarm_fusion import read_manifest
from clipfarm_fusion.core.kernels import DEFAULT_STRATEGIES
from clipfarm_fusion.core.policy import SUCCESS_FULL, SUCCESS_PLACEHOLDER
from clipfarm_fusion.devtools.embedded_s3 import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RECIPE_TIMEOUT_S = 300
LOG_TAIL_CHARS = 6000


def celery_recipe() -> str:
    """The bash block of docs/dagster.md that starts the Celery workers."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "docs" / "dagster.md").read_text(), re.S)
    [recipe] = [block for block in blocks if "dagster-celery worker start" in block]
    return recipe


@pytest.fixture
def redis_server_binary() -> None:
    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed: apt-get install redis-server"
        if os.environ.get("CLIPFARM_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason} (CLIPFARM_REQUIRE_REDIS=1)")
        pytest.skip(reason)


@pytest.fixture
def default_state_dir(seed_day):
    """The recipe leaves `state_dir` at its default (`<tmp>/clipfarm_fusion/<bucket>/<root>`): removed
    afterwards, since the test buckets' names come back in the next session."""
    seeded = seed_day(videos=24)
    yield seeded
    shutil.rmtree(Path(tempfile.gettempdir(), "clipfarm_fusion", seeded.bucket), ignore_errors=True)


def test_the_celery_recipe_fuses_a_day_on_a_fresh_home(
    redis_server_binary, default_state_dir, client, tmp_path
):
    seeded = default_state_dir
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").symlink_to(REPO / "dagster_home" / "dagster.yaml")
    script = celery_recipe().replace("6379", str(free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPFARM_", "DAGSTER_"))}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "CLIPFARM_BUCKET": seeded.bucket}
    log = tmp_path / "recipe.log"

    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the script, redis-server and the workers
        )
        try:
            returncode = process.wait(timeout=RECIPE_TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what the recipe leaves running: redis-server
            process.wait()

    assert returncode == 0, log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    expected = {
        video_id
        for video_id, status in seeded.day.expected_status().items()
        if status in (SUCCESS_FULL, SUCCESS_PLACEHOLDER)
    }
    for strategy in DEFAULT_STRATEGIES:
        manifest = read_manifest(strategy, bucket=seeded.bucket, root=seeded.root, client=client)
        assert set(manifest["video_id"]) == expected
