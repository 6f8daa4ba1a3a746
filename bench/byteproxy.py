"""bench/proxy.py, also counting BYTES on the wire: request bodies (what a run writes) and response bodies
(what it reads), in total and per kind of object (state DB, manifest, shards, embeddings, ...).

A subclass of proxy.py's handler (proxy.py itself is left alone): `start_byte_proxy(upstream)` returns the
same ProxyHandle; `counts()` then also holds `bytes_up`, `bytes_down`, `bytes_up:<kind>`,
`bytes_down:<kind>` and `requests:<kind>`. Bodies are counted as sent (an aws-chunked upload counts its
chunk framing; HTTP headers are not counted).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import ProxyHandle, _Handler, _Server, _Shared  # noqa: E402


def object_kind(path: str) -> str:
    """What a request touches, from its path (path-style: /bucket/key)."""
    key = unquote(urlsplit(path).path).lstrip("/").partition("/")[2]
    if not key:
        return "list"
    if "/state/fusion_" in key:
        return "state_db"
    if key.endswith("text_downloader.sqlite"):
        return "text_state"
    if key.endswith("fused_manifest.parquet"):
        return "manifest"
    if key.endswith("schema.json"):
        return "schema"
    if "/shards/" in key:
        return "shards"
    if "/embeddings/" in key:
        return "embeddings"
    if "/metadata/" in key:
        return "metadata"
    return "other"


class _Counted:
    """An upstream response whose body was read once and counted; the parent handler reads it again."""

    def __init__(self, response, payload: bytes) -> None:
        self._response, self._payload = response, payload
        self.status, self.reason = response.status, response.reason

    def read(self) -> bytes:
        return self._payload

    def getheaders(self):
        return self._response.getheaders()

    def getheader(self, name, default=None):
        return self._response.getheader(name, default)


class _ByteHandler(_Handler):
    def _read_body(self) -> bytes:
        body = super()._read_body()
        kind = object_kind(self.path)
        with self.shared.lock:
            self.shared.counts["bytes_up"] += len(body)
            self.shared.counts[f"bytes_up:{kind}"] += len(body)
            self.shared.counts[f"requests:{kind}"] += 1
        return body

    def _forward(self, body: bytes):
        response = super()._forward(body)
        payload = response.read()
        kind = object_kind(self.path)
        with self.shared.lock:
            self.shared.counts["bytes_down"] += len(payload)
            self.shared.counts[f"bytes_down:{kind}"] += len(payload)
        return _Counted(response, payload)


def start_byte_proxy(upstream: str, latency_ms: float = 0.0, host: str = "127.0.0.1") -> ProxyHandle:
    """A counting proxy (no faults) to `upstream` on a free port of `host`."""
    target = urlsplit(upstream)
    shared = _Shared(
        upstream=(target.hostname or "127.0.0.1", target.port or 80),
        latency_s=latency_ms / 1000.0,
        fault_rate=0.0,
        drop_rate=0.0,
        rng=random.Random(0),
    )
    handler = type("Handler", (_ByteHandler,), {"shared": shared})
    return ProxyHandle(_Server((host, 0), handler), shared)
