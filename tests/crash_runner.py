"""Run the `clipfarm-fusion` CLI in this process and SIGKILL it at a chosen write step.

Used by test_crash.py: `python crash_runner.py POINT MATCH NTH -- <cli args>`.
POINT is `before-put` / `after-put` (an S3 PutObject whose key contains MATCH: killed before the
request is sent, or after S3 acknowledged it and before we learn of it) or `state-commit` (the NTH
SQLite transaction of a fusion state DB). The kill is a real SIGKILL of this OS process: no
finally-blocks, no flushing, exactly what a machine loss looks like to the job.
"""

from __future__ import annotations

import os
import signal
import sys

import sqlalchemy as sa

from clipfarm_fusion import cli, s3io, state


def main() -> int:
    point, match, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[sys.argv.index("--") + 1 :]
    seen = 0

    def count_and_maybe_die() -> None:
        nonlocal seen
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    def remember_key(params, context, **_) -> None:
        context["crash_runner_key"] = params["url_path"]

    def on_put(context, **_) -> None:
        if match in context.get("crash_runner_key", ""):
            count_and_maybe_die()

    if point in ("before-put", "after-put"):
        make_client = s3io.make_client
        event = "before-call.s3.PutObject" if point == "before-put" else "after-call.s3.PutObject"

        def make_client_that_dies(*a, **k):
            client = make_client(*a, **k)
            client.meta.events.register("before-call.s3.PutObject", remember_key)
            client.meta.events.register(event, on_put)
            return client

        s3io.make_client = make_client_that_dies
    elif point == "state-commit":
        state.WRITE_BATCH = 7

        def on_commit(connection) -> None:
            if match in str(connection.engine.url):
                count_and_maybe_die()

        sa.event.listen(sa.engine.Engine, "commit", on_commit)
    else:
        raise SystemExit(f"unknown crash point {point}")
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
