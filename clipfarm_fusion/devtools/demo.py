"""`clipfarm-fusion demo`: synthetic days on an embedded S3 server (`demo_days`), each fused with every
strategy as it arrives, and a way to read what they made afterwards without starting a server by hand
(`demo_bucket`)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from clipfarm_fusion.config import DEFAULT_ROOT, FusionConfig
from clipfarm_fusion.devtools import demo_days, synthetic
from clipfarm_fusion.devtools.embedded_s3 import embedded_s3, moto_server_process
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import checks as read_checks
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.run.summary import RunSummary
from clipfarm_fusion.stores import s3io

log = logging.getLogger("clipfarm_fusion")
DEMO_BUCKET = "clipfarm-demo"
DEFAULT_OUT = Path("clipfarm-demo")


def _bucket_copy(out: Path) -> Path:
    return out / "s3" / DEMO_BUCKET


def copy_outputs(client, bucket: str, root: str, out: Path) -> int:
    """Copy the fused outputs and the state tables out of the embedded S3 before it stops, replacing what
    an earlier demo left in `out`, so the copy is exactly this run's bucket."""
    target_root = _bucket_copy(out) / root
    shutil.rmtree(target_root, ignore_errors=True)
    copied = 0
    for prefix in (f"{root}/fused/", f"{root}/state/fusion_"):
        for key in s3io.list_keys(client, bucket, prefix):
            target = _bucket_copy(out) / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3io.get_object(client, bucket, key).body or b"")
            copied += 1
    return copied


def run_demo(videos: int, days: int, summary_json: Path | None, out: Path) -> int:
    """Add the demo days to the embedded S3 one at a time, fusing each as it arrives, then copy out.
    The --state-dir cache lives in a temporary directory: it caches a bucket that vanishes with the
    embedded S3; the tables copied to `out` are the state. `summary_json` gets a JSON array of the
    days' run summaries, oldest first (each the object `run --summary-json` writes)."""
    made = demo_days.demo_days(days, videos)
    summaries: list[RunSummary] = []
    # A server in a child process: one in this process could not answer while delta-rs holds the GIL
    # (DeltaTable.history does), and the second day reads the state's commit history.
    with (
        moto_server_process() as endpoint,
        tempfile.TemporaryDirectory(prefix="clipfarm-demo-state-") as state_dir,
    ):
        client = s3io.make_client()
        config = FusionConfig(bucket=DEMO_BUCKET, state_dir=Path(state_dir))
        print(
            f"embedded S3 at {endpoint}: {days} day(s) of {videos} new videos, {made[0][0].run_date} to "
            f"{made[-1][0].run_date}, each added to s3://{DEMO_BUCKET}/{DEFAULT_ROOT}/ and fused in turn"
        )
        for day, objects in made:
            synthetic.add_day(client, DEMO_BUCKET, DEFAULT_ROOT, day, objects)
            summary = pipeline.run(config, day.run_date, client=client)
            print(f"{summary.to_table()}\n{fail_rate_line(summary)}\n", flush=True)
            summaries.append(summary)
        copied = copy_outputs(client, DEMO_BUCKET, DEFAULT_ROOT, out)
    if summary_json:
        summary_json.write_text(json.dumps([s.to_dict() for s in summaries], indent=2) + "\n")
        print(f"summaries of the {days} day(s) written to {summary_json}")
    newest = summaries[-1]
    print(
        f"\noutputs: {copied} objects copied from the embedded S3 to {_bucket_copy(out)}/ "
        "(shards, manifest and state tables, schema locks).\n"
        "Read them back (each command serves the copy on a private embedded S3 while it runs):\n"
        f"  clipfarm-fusion inspect --strategy concat --from-demo {out} --video-id "
        f"{_first_fused(newest)}\n"
        f"  clipfarm-fusion inspect --strategy concat --from-demo {out} --date {newest.run_date} --failed\n"
        f"  clipfarm-fusion export --strategy concat --from-demo {out} --out concat.parquet\n"
        "  python -c 'from clipfarm_fusion import read_manifest, read_vectors; "
        "from clipfarm_fusion.devtools.demo import demo_bucket\n"
        f'with demo_bucket("{out}") as bucket:\n'
        '    print(read_manifest("concat", bucket=bucket).head())\n'
        '    ids, vectors, rows = read_vectors("concat", bucket=bucket); print(vectors.shape)\''
    )
    return 0


def fail_rate_line(summary: RunSummary) -> str:
    """Each strategy's fail rate and what Dagster's `fail_rate_below_threshold` check would say of it."""
    verdicts = {
        name: read_checks.fail_rate(strategy.counts, strategy.delta, read_checks.FAIL_RATE_THRESHOLD)
        for name, strategy in summary.strategies.items()
    }
    rates = ", ".join(f"{name} {verdict.metadata['fail_rate']:.1%}" for name, verdict in verdicts.items())
    passed = all(verdict.passed for verdict in verdicts.values())
    return (
        f"{summary.run_date} fail rate (fail + fail_terminal of the delta): {rates}; the Dagster check "
        f"fail_rate_below_threshold (under {read_checks.FAIL_RATE_THRESHOLD:.0%}) "
        + ("passes" if passed else "FAILS: clipfarm-fusion inspect --failed lists every failed item")
    )


def _first_fused(summary) -> str:
    concat = summary.strategies.get("concat")
    samples = concat.samples.get("success_full", []) if concat else []
    return samples[0] if samples else "ID"


@contextlib.contextmanager
def demo_bucket(out: str | Path = DEFAULT_OUT) -> Iterator[str]:
    """Serve what `clipfarm-fusion demo --out OUT` copied out on an embedded S3 for the duration of the
    block; yields the bucket name to pass as `bucket=` (the AWS env points at the server meanwhile)."""
    source = _bucket_copy(Path(out))
    if not source.is_dir():
        raise ConfigError(f"{source} does not exist: run `clipfarm-fusion demo --out {out}` first")
    with embedded_s3():
        client = s3io.make_client()
        client.create_bucket(Bucket=DEMO_BUCKET)
        files = [path for path in source.rglob("*") if path.is_file()]
        for path in files:
            client.put_object(
                Bucket=DEMO_BUCKET, Key=path.relative_to(source).as_posix(), Body=path.read_bytes()
            )
        log.info("serving %d demo objects from %s as s3://%s", len(files), source, DEMO_BUCKET)
        yield DEMO_BUCKET
