"""`clipfarm-fusion dev`: the Dagster UI over an S3 that already holds a demo day, with no setup.

By default S3 is an embedded moto server (gone when dev stops), so Dagster's run history goes into a
temporary DAGSTER_HOME too: a history that points at vanished data would mislead. Set DAGSTER_HOME to
keep it, e.g. with `--external-s3` against the MinIO of infra/.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import botocore.exceptions

from . import s3io, synthetic
from .config import bucket_from_env
from .demo import DEMO_BUCKET
from .embedded_s3 import embedded_s3

log = logging.getLogger("clipfarm_fusion")
DEFS_MODULE = "clipfarm_fusion.defs.definitions"
REPO_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster_home" / "dagster.yaml"
SHUTDOWN_GRACE_SECONDS = 30


def seed_if_empty(client, bucket: str, root: str, videos: int) -> date | None:
    """Seed the synthetic day into `bucket` unless it already holds something, so demo data never mixes
    with real objects. The seeded day's run_date, or None when the bucket was left alone."""
    try:
        if client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0):
            return None
    except botocore.exceptions.ClientError as exc:
        if s3io.error_code(exc) != "NoSuchBucket":
            raise
    day, objects = synthetic.make_day(videos=videos)
    synthetic.seed(client, bucket, root, day, objects)
    return day.run_date


@contextlib.contextmanager
def dagster_home() -> Iterator[Path]:
    """$DAGSTER_HOME when set; else a temporary copy of the repo's dagster_home/ (pools, queue, no
    telemetry), so the repo stays clean."""
    if os.environ.get("DAGSTER_HOME"):
        yield Path(os.environ["DAGSTER_HOME"])
        return
    with tempfile.TemporaryDirectory(prefix="clipfarm-dagster-home-") as home:
        if REPO_DAGSTER_YAML.exists():
            shutil.copy(REPO_DAGSTER_YAML, home)
        else:
            log.warning(
                "no %s (not a source checkout): Dagster defaults apply, pool limits unset", REPO_DAGSTER_YAML
            )
        yield Path(home)


@contextlib.contextmanager
def s3_endpoint(external: bool) -> Iterator[str]:
    if external:
        yield os.environ.get("AWS_ENDPOINT_URL", "your AWS configuration")
        return
    with embedded_s3() as endpoint:
        yield endpoint


def run_dev(host: str, port: int, videos: int, external_s3: bool) -> int:
    """Start S3, seed the demo day if needed, then `dagster dev` in the foreground until Ctrl-C."""
    bucket = bucket_from_env() or DEMO_BUCKET
    with s3_endpoint(external_s3) as endpoint, dagster_home() as home:
        seeded = seed_if_empty(s3io.make_client(), bucket, "clipfarm", videos)
        contents = (
            f"seeded {videos} demo videos; materialise partition {seeded}"
            if seeded
            else "has data, not seeded"
        )
        print(f"S3 at {endpoint}: s3://{bucket}/clipfarm/ {contents}\nDAGSTER_HOME={home}", flush=True)
        print(f"Dagster UI: http://{host}:{port}", flush=True)
        env = {**os.environ, "CLIPFARM_BUCKET": bucket, "DAGSTER_HOME": str(home)}
        command = [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-m",
            DEFS_MODULE,
            "--host",
            host,
            "--port",
            str(port),
        ]
        # Ctrl-C and SIGTERM both mean "stop": Python's own handler also un-ignores SIGINT for the child
        # when a shell started us in the background. The child gets its own process group, so it hears
        # exactly one SIGINT (ours), which `dagster dev` takes as "shut down webserver and daemon cleanly".
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        process = subprocess.Popen(command, env=env, process_group=0)
        try:
            return process.wait()
        except KeyboardInterrupt:
            return _stop(process)


def _stop(process: subprocess.Popen) -> int:
    """Stop `dagster dev` before the embedded S3 goes away; terminate it only if it hangs."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=SHUTDOWN_GRACE_SECONDS)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        process.terminate()
        return process.wait()
