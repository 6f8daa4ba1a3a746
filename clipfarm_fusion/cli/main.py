"""The command line `clipfarm-fusion`: one parser of every command, and `main`, which runs the chosen one
and maps any error to its exit code (`exits`). The commands live beside it: `run_command`, `tools`
(demo, dev, migrate-schema, make-projection), `reading` (inspect, export, verify, gc, maintain,
snapshot-manifest) and `refusing` (detect-changes, refuse)."""

from __future__ import annotations

import argparse
import faulthandler
import gc
import logging
import os
import sys

from clipfarm_fusion.cli import reading, refusing, tools
from clipfarm_fusion.cli.exits import exit_for
from clipfarm_fusion.cli.run_command import add_run_command, config_from_args, run_and_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipfarm-fusion",
        description="Fuse per-video video/audio/text embeddings on S3 into sharded, manifest-indexed vectors.",
        epilog="S3 endpoint and credentials come from the standard AWS configuration "
        "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_DEFAULT_REGION).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    add_run_command(commands)
    tools.add_tool_commands(commands)
    reading.add_commands(commands)
    refusing.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _run_command(args)
    finally:
        # Free Arrow objects while Arrow is still alive: left to interpreter teardown, a collection
        # in another thread intermittently aborts the process (apache/arrow#34314).
        gc.collect()


def _run_command(args: argparse.Namespace) -> int:
    try:
        if args.command in tools.HANDLERS:
            return tools.HANDLERS[args.command](args)
        if args.command in reading.COMMANDS:
            return reading.run(args)
        if args.command in refusing.COMMANDS:
            return refusing.run(args)
        return run_and_report(config_from_args(args), args.run_date, args.summary_json, args.workers)
    except Exception as exc:
        verdict = exit_for(exc)
        if verdict is None:
            raise
        code, message = verdict
        print(f"clipfarm-fusion: {message}", file=sys.stderr)
        return code


def entry() -> None:
    """The `clipfarm-fusion` console script: `main`, then, once every stream is flushed, a hard exit.
    Arrow's and delta-rs's native threads can abort a normal interpreter teardown ("terminate called
    without an active exception", apache/arrow#34314), turning a finished run into exit -6; nothing of
    ours needs the teardown once `main` has returned. A native crash (a segfault in Arrow or delta-rs)
    prints every thread's Python stack on stderr first, so it is never a silent exit 139."""
    faulthandler.enable()
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, bad usage
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
