"""An S3 server on loopback for the demo, `dev`, the tests and the benchmark: moto's real HTTP server.

Either in-process (`embedded_s3`, no extra process to manage: `dev`, `demo_bucket`) or as a child process
(`moto_server_process`, so the server's CPU does not compete with ours for the GIL: the demo, tests,
bench). An in-process server cannot answer while a call into delta-rs holds the GIL (`DeltaTable.history`
does, and a run reads its state's history once the state exists): only one run goes through it.
Both set the standard AWS variables for this process, so everything else talks to the server
exactly as it would to real S3 or MinIO. moto is not a runtime dependency: it comes with the `demo`
extra (and `dev`, which includes it); without it both raise ConfigError (CLI exit code 2) saying so.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from clipfarm_fusion.errors import ConfigError

MOTO_MISSING = "the embedded S3 needs moto, which is not installed: pip install 'clipfarm-fusion[demo]'"
DEMO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "clipfarm-demo",
    "AWS_SECRET_ACCESS_KEY": "clipfarm-demo",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def require_moto() -> None:
    """Raise ConfigError naming the extra to install unless moto's server can be imported."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{MOTO_MISSING} ({exc})") from None


@contextmanager
def _aws_env(endpoint: str) -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in [*DEMO_CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(DEMO_CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def embedded_s3() -> Iterator[str]:
    """Start moto's server in this process on 127.0.0.1 and a free port; yields its endpoint URL."""
    require_moto()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with _aws_env(f"http://{host}:{port}") as endpoint:
            yield endpoint
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_server_process(startup_timeout: float = 30.0) -> Iterator[str]:
    """Run `python -m moto.server` as a child process on a free loopback port; yields its endpoint URL."""
    require_moto()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.1)
        with _aws_env(endpoint):
            yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
