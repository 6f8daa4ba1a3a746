"""What every bench script shares: a moto S3 server in its own process, the AWS env, machine facts.

The server runs as a separate process, never in-process: in-process moto would share the
benchmarked code's GIL and make every client look slower than it is.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

from clipfarm_fusion.devtools.embedded_s3 import moto_server_process as moto_process  # noqa: F401 - re-exported

BENCH_DIR = Path(__file__).resolve().parent
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def use_endpoint(url: str) -> None:
    """Point this process (and every child it starts) at `url` through the standard AWS variables."""
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = url


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
