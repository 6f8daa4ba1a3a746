"""The commit lease: one commit per strategy at a time, so "newest fusion wins" means commit order.

A commit of strategy `s` holds `<root>/fused/<s>/commit.lease` while it checks which of its videos
another run committed since its plan, publishes its manifest rows and commits its state. Two runs can
then never interleave those steps (run A's manifest, run B's manifest, B's state, A's state would leave
the manifest and the state naming different runs). The lease is one small object created with
`If-None-Match: *`: one PUT to take it, then one GET (is it still ours?) and one DELETE to give it
back, so a normal day pays three requests per strategy, plus one PUT per renewal.

A holder renews the lease (a conditional PUT) every RENEW_SECONDS while its commit runs. A lease whose
ETag has not changed for STALE_SECONDS of the waiter's own clock is the lease of a commit that died,
and is taken over (no clocks are compared across machines); so is one whose holder was a process of
this host that no longer exists. A waiter gives up after WAIT_SECONDS of a live holder with
ConcurrentWriteError (exit 4): a rerun converges.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from clipfarm_fusion.errors import ConcurrentWriteError
from clipfarm_fusion.stores import s3io

log = logging.getLogger(__name__)
RENEW_SECONDS = 10.0
STALE_SECONDS = 45.0
WAIT_SECONDS = 1800.0
POLL_SECONDS = 0.25


def _body(run_id: str) -> bytes:
    """Unique per write, so every renewal changes the ETag waiters watch."""
    holder = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "nonce": uuid.uuid4().hex}
    return json.dumps(holder).encode()


def _dead_here(body: bytes) -> bool:
    """Whether the holder was a process of this host that is gone (a killed run on the same machine)."""
    try:
        holder = json.loads(body)
        if holder.get("host") != socket.gethostname():
            return False
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError, OSError):
        return False
    return False


@contextmanager
def held(
    client, bucket: str, key: str, run_id: str, what: str, wait_s: float = WAIT_SECONDS
) -> Iterator[None]:
    """Hold the lease at `key` for the block (waiting for a live holder, taking over a dead one)."""
    etag = _take(client, bucket, key, run_id, what, wait_s)
    stop = threading.Event()
    current = {"etag": etag}

    def renew() -> None:
        while not stop.wait(RENEW_SECONDS):
            try:
                current["etag"] = s3io.put_replacing(client, bucket, key, _body(run_id), current["etag"])
            except Exception as exc:  # noqa: BLE001 - a failed renewal is logged; the commit goes on
                log.warning("could not renew the commit lease s3://%s/%s: %s", bucket, key, exc)

    renewer = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        fetched = s3io.get_object(client, bucket, key)
        if fetched.body is not None and json.loads(fetched.body).get("run_id") == run_id:
            client.delete_object(Bucket=bucket, Key=key)


def _take(client, bucket: str, key: str, run_id: str, what: str, wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    watched: tuple[str | None, float] = (None, time.monotonic())
    announced = False
    while True:
        etag = s3io.put_if_absent(client, bucket, key, _body(run_id))
        if etag is not None:
            return etag
        holder = s3io.get_object(client, bucket, key)
        if holder.body is None:
            continue  # released in between
        now = time.monotonic()
        if holder.etag != watched[0]:
            watched = (holder.etag, now)
        if _dead_here(holder.body) or now - watched[1] > STALE_SECONDS:
            log.warning(
                "%s: taking over the commit lease of a commit that died (%s)", what, holder.body[:200]
            )
            client.delete_object(Bucket=bucket, Key=key)
            continue
        if now > deadline:
            raise ConcurrentWriteError(
                f"{what}: another run held the commit lease s3://{bucket}/{key} for {wait_s:.0f} s; "
                "nothing of this strategy was published. Rerun the day once that run has finished"
            )
        if not announced:
            log.info("%s: waiting for another run's commit to finish (s3://%s/%s)", what, bucket, key)
            announced = True
        time.sleep(POLL_SECONDS)
