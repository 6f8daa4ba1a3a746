"""`clipfarm-fusion demo`: a synthetic day on an embedded S3 server, fused with every strategy."""

from __future__ import annotations

import logging
from pathlib import Path

from . import pipeline, s3io, synthetic
from .config import FusionConfig
from .embedded_s3 import embedded_s3

log = logging.getLogger("clipfarm_fusion")
DEMO_BUCKET = "clipfarm-demo"


def copy_outputs(client, bucket: str, root: str, out: Path) -> int:
    """Copy the fused outputs and state mirrors out of the embedded S3 before it stops."""
    copied = 0
    for prefix in (f"{root}/fused/", f"{root}/state/fusion_"):
        for key in s3io.list_keys(client, bucket, prefix):
            target = out / "s3" / bucket / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3io.get_object(client, bucket, key).body or b"")
            copied += 1
    return copied


def run_demo(videos: int, summary_json: Path | None, out: Path) -> int:
    day, objects = synthetic.make_day(videos=videos)
    with embedded_s3() as endpoint:
        client = s3io.make_client()
        synthetic.seed(client, DEMO_BUCKET, "clipfarm", day, objects)
        print(
            f"embedded S3 at {endpoint}: seeded {videos} videos for {day.run_date} in s3://{DEMO_BUCKET}/clipfarm/"
        )
        config = FusionConfig(bucket=DEMO_BUCKET, state_dir=out / "state")
        summary = pipeline.run(config, day.run_date, client=client)
        copied = copy_outputs(client, DEMO_BUCKET, "clipfarm", out)
    print(summary.to_table())
    if summary_json:
        summary.write_json(summary_json)
        print(f"summary written to {summary_json}")
    print(
        f"\noutputs: {copied} objects copied from the embedded S3 to {out / 's3' / DEMO_BUCKET}/ "
        f"(shards, manifests, schema locks, state mirrors); local state in {out / 'state'}/"
    )
    return 0
