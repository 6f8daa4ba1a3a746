"""A loopback HTTP proxy in front of an S3 endpoint: adds latency, counts requests, injects faults.

Why a proxy and not a patched client: it measures what actually goes over the wire, whatever the
client library does (its own HEADs, retries, multipart), and it turns a zero-latency loopback S3
into one that behaves like a remote one (`latency_ms` per request, slept in the handler thread so
concurrent requests overlap the way they do against real S3).

Fault injection (for reliability tests): `fault_rate` of requests get a 500 InternalError or a
503 SlowDown with an S3 XML body, and `drop_rate` of requests get their socket closed without any
response. Faults are decided before forwarding, so a faulted PUT never reached the store. The
decisions come from one seeded RNG in arrival order, so a sequential client sees the same faults
on every run.

Outages (for "faults are not failures" tests): `handle.outage(seconds, after=N, kinds=("GET",))` makes
every request of those kinds fail (503 SlowDown, or a dropped connection with `mode="drop"`) for
`seconds`, starting at the N-th such request from now, so a run can be cut off mid-way deterministically.

Library: `handle = start_proxy("http://127.0.0.1:5000", latency_ms=20)`; point `AWS_ENDPOINT_URL`
at `handle.url`; read `handle.counts()`; `handle.reset()`; `handle.stop()`.
CLI: `python bench/proxy.py --upstream http://127.0.0.1:5000 --port 8001 --latency 20`.
"""

from __future__ import annotations

import argparse
import http.client
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

METHODS = ("GET", "HEAD", "PUT", "LIST", "POST", "DELETE")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}
_ERRORS = (
    (500, "InternalError", "We encountered an internal error. Please try again."),
    (503, "SlowDown", "Please reduce your request rate."),
)


def request_kind(method: str, path: str) -> str:
    """GET/HEAD/PUT/POST/DELETE, or LIST for a bucket-level GET (path-style: `/bucket[/]`) or `list-type`."""
    parts = urlsplit(path)
    key = parts.path.lstrip("/").partition("/")[2]
    if method == "GET" and (not key or "list-type" in parse_qs(parts.query)):
        return "LIST"
    return method


@dataclass
class _Shared:
    """State every handler thread shares: counters, the fault RNG and the knobs."""

    upstream: tuple[str, int]
    latency_s: float
    fault_rate: float
    drop_rate: float
    rng: random.Random
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter = field(default_factory=Counter)
    outage_kinds: frozenset[str] = frozenset()
    outage_mode: str = "error"
    outage_after: int = 0  # matching requests still let through before the outage starts
    outage_seconds: float = 0.0
    outage_until: float | None = None  # set when the outage starts

    def _in_outage(self, kind: str) -> bool:
        if kind not in self.outage_kinds:
            return False
        if self.outage_until is None:
            if self.outage_after > 0:
                self.outage_after -= 1
                return False
            self.outage_until = time.monotonic() + self.outage_seconds
            self.counts["outage_started"] += 1
        return time.monotonic() < self.outage_until

    def decide(self, kind: str) -> str:
        """Count the request and choose its fate: `ok`, `error` or `drop`."""
        with self.lock:
            self.counts[kind] += 1
            if self._in_outage(kind):
                self.counts["outage"] += 1
                self.counts[self.outage_mode] += 1
                return self.outage_mode
            draw = self.rng.random() if (self.fault_rate or self.drop_rate) else 1.0
            fate = (
                "drop"
                if draw < self.drop_rate
                else "error"
                if draw < self.drop_rate + self.fault_rate
                else "ok"
            )
            if fate != "ok":
                self.counts[fate] += 1
            return fate

    def error(self) -> tuple[int, str, str]:
        with self.lock:
            return _ERRORS[1] if self.outage_until is not None else self.rng.choice(_ERRORS)


class _Server(ThreadingHTTPServer):
    """Threaded, with a listen backlog deep enough for a 64-thread client opening its pool at once."""

    daemon_threads = True
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    """Forwards one client connection over one kept-alive upstream connection."""

    protocol_version = "HTTP/1.1"
    shared: _Shared
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        """Silent: a benchmark proxy that logs every request would measure its own logging."""

    def setup(self) -> None:
        """Count connections (a client that does not keep alive opens one per request) and turn
        Nagle off, so a small write is not held back waiting for the peer's delayed ACK."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.shared.lock:
            self.shared.counts["connections"] += 1

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> http.client.HTTPResponse:
        """Send upstream; reconnect once when the kept-alive connection went stale."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.shared.upstream, timeout=120)
                self._upstream.connect()
                self._upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                return self._upstream.getresponse()
            except (ConnectionError, http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _send_error_xml(self) -> None:
        status, code, message = self.shared.error()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>bench-proxy</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        body = self._read_body()
        fate = self.shared.decide(request_kind(self.command, self.path))
        if self.shared.latency_s:
            time.sleep(self.shared.latency_s)
        if fate == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fate == "error":
            self._send_error_xml()
            return
        response = self._forward(body)
        payload = response.read()
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        declared = response.getheader("Content-Length")
        no_body = self.command == "HEAD" or response.status in (204, 304)
        self.send_header("Content-Length", declared if no_body and declared else str(len(payload)))
        self.end_headers()
        if not no_body:
            self.wfile.write(payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def finish(self) -> None:
        super().finish()
        if self._upstream is not None:
            self._upstream.close()


class ProxyHandle:
    """A running proxy: `.url`, `.counts()`, `.reset()`, `.stop()`."""

    def __init__(self, server: ThreadingHTTPServer, shared: _Shared) -> None:
        self._server, self._shared = server, shared
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=server.serve_forever, name="bench-proxy", daemon=True)
        self._thread.start()

    def counts(self) -> dict[str, int]:
        """Requests by kind (GET, HEAD, PUT, LIST, POST, DELETE), client `connections` opened, and the
        `error`/`drop` faults injected."""
        with self._shared.lock:
            counted = dict(self._shared.counts)
        return {**{m: 0 for m in METHODS}, **counted}

    def reset(self) -> None:
        with self._shared.lock:
            self._shared.counts.clear()

    def outage(
        self, seconds: float, after: int = 0, kinds: tuple[str, ...] = METHODS, mode: str = "error"
    ) -> None:
        """Fail every request of `kinds` for `seconds` (503 SlowDown, or `mode="drop"`: close the
        connection unanswered), starting once `after` more of them have gone through."""
        with self._shared.lock:
            self._shared.outage_kinds = frozenset(kinds)
            self._shared.outage_mode = mode
            self._shared.outage_after = after
            self._shared.outage_seconds = seconds
            self._shared.outage_until = None

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_proxy(
    upstream: str,
    latency_ms: float = 0.0,
    fault_rate: float = 0.0,
    drop_rate: float = 0.0,
    seed: int = 0,
    host: str = "127.0.0.1",
    port: int = 0,
) -> ProxyHandle:
    """Start a threaded proxy to `upstream` (http://host:port) on `host:port` (0 = a free port)."""
    if not 0 <= fault_rate + drop_rate <= 1:
        raise ValueError("fault_rate + drop_rate must be within [0, 1]")
    target = urlsplit(upstream)
    shared = _Shared(
        upstream=(target.hostname or "127.0.0.1", target.port or 80),
        latency_s=latency_ms / 1000.0,
        fault_rate=fault_rate,
        drop_rate=drop_rate,
        rng=random.Random(seed),
    )
    handler = type("Handler", (_Handler,), {"shared": shared})
    server = _Server((host, port), handler)
    return ProxyHandle(server, shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="S3 endpoint to forward to, http://host:port")
    parser.add_argument("--port", type=int, default=0, help="listen port (default: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="added latency per request, ms")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction answered 500/503")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="fraction of connections dropped")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    handle = start_proxy(
        args.upstream, args.latency, args.fault_rate, args.drop_rate, args.seed, port=args.port
    )
    print(f"proxy {handle.url} -> {args.upstream} (Ctrl-C prints counts and stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print(handle.counts())
        handle.stop()


if __name__ == "__main__":
    main()
