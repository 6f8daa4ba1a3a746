"""Seed an S3 endpoint with a synthetic day of N videos, the same generator the demo and tests use.

`clipfarm_fusion.devtools.synthetic.DEFAULT_MIX`: ~70% full, 10% text placeholder, the rest pending, missing
or corrupt; 768-d float32; every 10th video has an older duplicate metadata row. The day is a pure
function of (videos, seed), so every benchmark run and the naive baseline see identical bytes.

CLI: `python bench/seed.py --endpoint http://127.0.0.1:5000 --bucket bench --videos 600`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import use_endpoint  # noqa: E402

from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.stores import s3io  # noqa: E402

RUN_DATE = date(2026, 3, 1)


@dataclass
class SeededDay:
    """What was put on S3: the day (expected statuses) and the embedding keys that exist."""

    bucket: str
    root: str
    day: synthetic.SyntheticDay
    object_keys: list[str]


def make(videos: int, seed: int = 0) -> tuple[synthetic.SyntheticDay, dict[str, bytes]]:
    return synthetic.make_day(videos=videos, run_date=RUN_DATE, dim=768, seed=seed)


def seed_day(
    client,
    bucket: str,
    root: str,
    videos: int,
    seed: int = 0,
    made: tuple[synthetic.SyntheticDay, dict[str, bytes]] | None = None,
) -> SeededDay:
    """Upload a day under `s3://bucket/root/`; pass `made` to reuse an already generated day."""
    day, objects = made or make(videos, seed)
    synthetic.seed(client, bucket, root, day, objects, threads=16)
    return SeededDay(bucket, root, day, [f"{root}/{suffix}" for suffix in objects])


def main() -> None:
    parser = argparse.ArgumentParser(description="Seed a synthetic day of embeddings on an S3 endpoint.")
    parser.add_argument("--endpoint", required=True, help="S3 endpoint URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--root", default="clipfarm")
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    use_endpoint(args.endpoint)
    started = time.monotonic()
    seeded = seed_day(s3io.make_client(16), args.bucket, args.root, args.videos, args.seed)
    print(
        f"seeded {args.videos} videos ({len(seeded.object_keys)} embedding objects) for {RUN_DATE} in "
        f"s3://{args.bucket}/{args.root}/ in {time.monotonic() - started:.1f}s"
    )


if __name__ == "__main__":
    main()
