"""`clipfarm-fusion dev`: the Dagster UI over an S3 that already holds the demo days, with no setup.

By default S3 is an embedded moto server (gone when dev stops), so Dagster's run history goes into a
temporary DAGSTER_HOME too: a history that points at vanished data would mislead. Set DAGSTER_HOME to
keep it, e.g. with `--external-s3` against the MinIO of infra/.

The UI is Dagster's `dg dev` (dagster-dg-cli, in the `dev` extra), run with this interpreter. From a
checkout (the package's folder sits next to a pyproject.toml with `[tool.dg]`), dg serves the project
that pyproject describes. From an installed wheel there is no project for dg to find, so dg is given
the module with `-m`, which serves the installed package from any directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from datetime import date
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import botocore.exceptions

from clipfarm_fusion.config import bucket_from_env
from clipfarm_fusion.devtools import demo_days, package_data, synthetic
from clipfarm_fusion.devtools.demo import DEMO_BUCKET
from clipfarm_fusion.devtools.demo_days import DEFAULT_DAYS
from clipfarm_fusion.devtools.embedded_s3 import embedded_s3
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.stores import s3_faults, s3io

log = logging.getLogger("clipfarm_fusion")
DEFS_MODULE = "clipfarm_fusion.defs.definitions"
DG_MISSING = (
    "`clipfarm-fusion dev` runs Dagster's `dg` (dagster-dg-cli), which is not installed: "
    "pip install 'clipfarm-fusion[dev]'"
)
SHUTDOWN_GRACE_SECONDS = 30


def seed_if_empty(client, bucket: str, root: str, videos: int, days: int = DEFAULT_DAYS) -> list[date]:
    """Seed the demo days (`demo_days`) into `bucket` unless it already holds something, so demo data
    never mixes with real objects. The seeded days' run_dates, oldest first; empty when the bucket was
    left alone. Every day is added before any is fused, so a backfill sees upstream as it is now."""
    try:
        if client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0):
            return []
    except botocore.exceptions.ClientError as exc:
        if s3_faults.error_code(exc) != "NoSuchBucket":
            raise
    made = demo_days.demo_days(days, videos)
    for day, objects in made:
        synthetic.add_day(client, bucket, root, day, objects)
    return [day.run_date for day, _ in made]


@contextlib.contextmanager
def dagster_home() -> Iterator[Path]:
    """$DAGSTER_HOME when set; else a temporary one holding the packaged dagster_home/dagster.yaml
    (pools, queue, no telemetry), so the working directory stays clean."""
    if os.environ.get("DAGSTER_HOME"):
        yield Path(os.environ["DAGSTER_HOME"])
        return
    with tempfile.TemporaryDirectory(prefix="clipfarm-dagster-home-") as home:
        Path(home, "dagster.yaml").write_text(package_data.dagster_yaml(), encoding="utf-8")
        yield Path(home)


PACKAGE = __package__.partition(".")[0]  # the dg project's root module: clipfarm_fusion


def dg_project_root() -> Path | None:
    """The checkout this package is installed from in editable mode, when it is a dg project
    (pyproject.toml with `[tool.dg]` whose root_module is this package); else None: a wheel install.

    Asked of the installed distribution (PEP 610 `direct_url.json`), never of this file's location,
    so nothing depends on where a wheel put the package."""
    # A checkout on sys.path also shows its build's egg-info, which has no direct_url.json: skip it.
    records = (d.read_text("direct_url.json") for d in metadata.distributions(name="clipfarm-fusion"))
    origin = json.loads(next((record for record in records if record), "{}"))
    if not origin.get("dir_info", {}).get("editable"):
        return None
    root = Path(url2pathname(urlparse(origin["url"]).path))
    try:
        config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    dg = config.get("tool", {}).get("dg", {})
    if dg.get("directory_type") == "project" and dg.get("project", {}).get("root_module") == PACKAGE:
        return root
    return None


def dg_dev_command(host: str, port: int) -> list[str]:
    """`dg dev` with this interpreter (so no uv and no project .venv are involved): on the dg project
    of the checkout, or on the module when installed from a wheel (dg passes `-m` on to Dagster's
    dev server, no project needed)."""
    try:
        import dagster_dg_cli  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{DG_MISSING} ({exc})") from None
    command = [sys.executable, "-m", "dagster_dg_cli.cli", "dev", "--host", host, "--port", str(port)]
    root = dg_project_root()
    if root is None:
        return [*command, "-m", DEFS_MODULE]
    return [*command, "--target-path", str(root), "--use-active-venv"]


@contextlib.contextmanager
def s3_endpoint(external: bool) -> Iterator[str]:
    if external:
        yield os.environ.get("AWS_ENDPOINT_URL", "your AWS configuration")
        return
    with embedded_s3() as endpoint:
        yield endpoint


def run_dev(host: str, port: int, videos: int, days: int, external_s3: bool) -> int:
    """Start S3, seed the demo days if needed, then `dg dev` in the foreground until Ctrl-C."""
    bucket = bucket_from_env() or DEMO_BUCKET
    command = dg_dev_command(host, port)
    with s3_endpoint(external_s3) as endpoint, dagster_home() as home:
        seeded = seed_if_empty(s3io.make_client(), bucket, "clipfarm", videos, days)
        print(
            f"S3 at {endpoint}: s3://{bucket}/clipfarm/ {_seeded(seeded, videos)}\nDAGSTER_HOME={home}",
            flush=True,
        )
        print(f"Dagster UI: http://{host}:{port}", flush=True)
        env = {**os.environ, "CLIPFARM_BUCKET": bucket, "DAGSTER_HOME": str(home)}
        # Ctrl-C and SIGTERM both mean "stop": Python's own handler also un-ignores SIGINT for the child
        # when a shell started us in the background. The child gets its own process group, so it hears
        # exactly one SIGINT (ours), which `dg dev` (Dagster's dev server) takes as "shut down webserver
        # and daemon cleanly".
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        process = subprocess.Popen(command, env=env, process_group=0)
        try:
            return process.wait()
        except KeyboardInterrupt:
            return _stop(process)


def _seeded(dates: list[date], videos: int) -> str:
    """What was seeded and what to materialise."""
    if not dates:
        return "has data, not seeded"
    if len(dates) == 1:
        return f"seeded {videos} demo videos; materialise partition {dates[0]}"
    return (
        f"seeded {len(dates)} days of {videos} new videos, {dates[0]} to {dates[-1]}; materialise them as "
        f"one backfill (select the assets, Materialize, partitions {dates[0]}...{dates[-1]}); the newest, "
        f"{dates[-1]}, shows fail_rate_below_threshold failing"
    )


def _stop(process: subprocess.Popen) -> int:
    """Stop `dg dev` before the embedded S3 goes away; terminate it only if it hangs."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=SHUTDOWN_GRACE_SECONDS)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        process.terminate()
        return process.wait()
