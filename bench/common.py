"""What every bench script shares: a moto S3 server in its own process, the AWS env, machine facts.

The server runs as a separate process, never in-process: in-process moto would share the
benchmarked code's GIL and make every client look slower than it is.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def use_endpoint(url: str) -> None:
    """Point this process (and every child it starts) at `url` through the standard AWS variables."""
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = url


@contextmanager
def moto_process() -> Iterator[str]:
    """Start `moto_server` (or `python -m moto.server`) on a free loopback port; yield its URL."""
    port = free_port()
    beside = Path(sys.executable).with_name("moto_server")
    exe = str(beside) if beside.exists() else shutil.which("moto_server") or ""
    command = (
        [exe, "-H", "127.0.0.1", "-p", str(port)]
        if exe
        else [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {command}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def peak_rss_mb() -> float:
    """This process's peak RSS (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, object]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
