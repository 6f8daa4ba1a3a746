"""Run the `clipfarm-fusion` CLI in this process and SIGKILL it at a chosen write step, or pause it there.

Used by test_crash.py and test_reliability.py: `python crash_runner.py POINT MATCH NTH -- <cli args>`.
POINT is `before-put` / `after-put` (an S3 PutObject whose key contains MATCH: killed before the
request is sent, or after S3 acknowledged it and before we learn of it) or `before-commit` /
`after-commit` (a lake table commit, a create or an upsert, of a table whose location contains MATCH:
killed before delta-rs starts writing, or after its commit is durable and before we learn of it). The kill is a real SIGKILL of this OS process: no
finally-blocks, no flushing, exactly what a machine loss looks like to the job.
POINT `pause-before-commit` kills nothing: before the NTH matching commit it writes `crash_runner:
paused` to stderr and waits for a line on stdin, so the test can change the world at exactly that step
(e.g. cut S3 off through the fault proxy) before the run goes on.
"""

from __future__ import annotations

import os
import signal
import sys

from clipfarm_fusion.cli import main as cli
from clipfarm_fusion.stores import lake, s3io

# lake's functions that commit to an open table (their first argument); `create` takes a location.
COMMITS_TO_A_TABLE = ("merge", "replace", "note")


def main() -> int:
    point, match, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[sys.argv.index("--") + 1 :]
    seen = 0

    def reached() -> bool:
        nonlocal seen
        seen += 1
        return seen == nth

    def count_and_maybe_die() -> None:
        if reached():
            os.kill(os.getpid(), signal.SIGKILL)

    def remember_key(params, context, **_) -> None:
        context["crash_runner_key"] = params["url_path"]

    def on_put(context, **_) -> None:
        if match in context.get("crash_runner_key", ""):
            count_and_maybe_die()

    def wrap_commits(before, after) -> None:
        def wrapped(commit, location_of):
            def wrapper(*a, **k):
                hit = match in location_of(*a)
                if hit:
                    before()
                result = commit(*a, **k)
                if hit:
                    after()
                return result

            return wrapper

        lake.create = wrapped(lake.create, lambda location, *_: location)
        for name in COMMITS_TO_A_TABLE:
            if hasattr(lake, name):
                setattr(lake, name, wrapped(getattr(lake, name), lambda table, *_: table.table_uri))

    if point in ("before-put", "after-put"):
        make_client = s3io.make_client
        event = "before-call.s3.PutObject" if point == "before-put" else "after-call.s3.PutObject"

        def make_client_that_dies(*a, **k):
            client = make_client(*a, **k)
            client.meta.events.register("before-call.s3.PutObject", remember_key)
            client.meta.events.register(event, on_put)
            return client

        s3io.make_client = make_client_that_dies
    elif point == "before-commit":
        wrap_commits(count_and_maybe_die, lambda: None)
    elif point == "after-commit":
        wrap_commits(lambda: None, count_and_maybe_die)
    elif point == "pause-before-commit":

        def pause() -> None:
            if reached():
                print("crash_runner: paused", file=sys.stderr, flush=True)
                sys.stdin.readline()

        wrap_commits(pause, lambda: None)
    else:
        raise SystemExit(f"unknown crash point {point}")
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
