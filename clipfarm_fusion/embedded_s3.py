"""An S3 server on loopback for the demo, `dev` and the tests: moto's real HTTP server, in-process.

It sets the standard AWS variables for this process, so everything else talks to it exactly as it
would to real S3 or MinIO.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

DEMO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "clipfarm-demo",
    "AWS_SECRET_ACCESS_KEY": "clipfarm-demo",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def embedded_s3() -> Iterator[str]:
    """Start moto's server on 127.0.0.1 and a free port; yields its endpoint URL with the env pointed at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*DEMO_CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(DEMO_CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
