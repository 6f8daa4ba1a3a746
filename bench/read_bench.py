"""How fast `read_vectors` reads a fused day back: vectors/s, MB/s of shards, GETs per shard.

`python bench/read_bench.py [--videos 600] [--shard-size 64] [--strategy concat] [--latency 0,20]
[--threads 16] [--repeat 3]`

Starts a moto server process, seeds a synthetic day (bench/seed.py) and fuses it with `pipeline.run`
straight against moto, then reads every fused vector back through the counting proxy (bench/proxy.py)
at each latency, best of `--repeat`. GETs are counted on the wire, so a second GET of a shard (a
retry, a re-read) would show. Prints one line per latency, ready for bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow.compute as pc  # noqa: E402
from common import moto_process, use_endpoint  # noqa: E402
from proxy import start_proxy  # noqa: E402
from seed import RUN_DATE, seed_day  # noqa: E402

from clipfarm_fusion.config import FusionConfig  # noqa: E402
from clipfarm_fusion.core.layout import Layout  # noqa: E402
from clipfarm_fusion.read.vectors import read_vectors  # noqa: E402
from clipfarm_fusion.run import pipeline  # noqa: E402
from clipfarm_fusion.stores import s3io

BUCKET, ROOT = "read-bench", "clipfarm"


def fuse_day(videos: int, strategy: str, shard_size: int, state_dir: Path) -> None:
    client = s3io.make_client(16)
    seed_day(client, BUCKET, ROOT, videos)
    config = FusionConfig(
        bucket=BUCKET, root=ROOT, strategies=(strategy,), shard_size=shard_size, state_dir=state_dir
    )
    pipeline.run(config, RUN_DATE, client=client)


def shard_megabytes(strategy: str) -> float:
    """Size of every shard of the strategy: what one full read must move."""
    client = s3io.make_client(4)
    prefix = f"{Layout(ROOT).strategy_prefix(strategy)}shards/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sum(item["Size"] for page in pages for item in page.get("Contents", [])) / 1e6


def measure(moto_url: str, strategy: str, latency: float, threads: int, repeat: int) -> str:
    """Best-of-`repeat` wall of a full read through a proxy adding `latency` ms per request."""
    megabytes = shard_megabytes(strategy)
    proxy = start_proxy(moto_url, latency_ms=latency)
    use_endpoint(proxy.url)
    try:
        best, gets = float("inf"), 0
        for _ in range(repeat):
            client = s3io.make_client(threads)
            proxy.reset()
            started = time.perf_counter()
            ids, vectors, rows = read_vectors(
                strategy, bucket=BUCKET, root=ROOT, client=client, threads=threads
            )
            best = min(best, time.perf_counter() - started)
            gets = proxy.counts()["GET"]
    finally:
        proxy.stop()
        use_endpoint(moto_url)
    shards = pc.count_distinct(rows["fused_key"]).as_py()
    return (
        f"read_vectors {strategy}, {latency:g} ms, {threads} threads: {len(ids)} vectors x {vectors.shape[1]} "
        f"from {shards} shards ({megabytes:.1f} MB) in {best:.3f}s (best of {repeat}): "
        f"{len(ids) / best:,.0f} vectors/s, {megabytes / best:.1f} MB/s, "
        f"{(gets - 1) / shards:.2f} GETs per shard (+1 manifest GET)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=600, help="videos in the seeded day (default: 600)")
    parser.add_argument("--shard-size", type=int, default=64, help="vectors per shard (default: 64)")
    parser.add_argument("--strategy", default="concat", help="strategy to fuse and read (default: concat)")
    parser.add_argument("--latency", default="0,20", help="ms per request added by the proxy (default: 0,20)")
    parser.add_argument("--threads", type=int, default=16, help="read_vectors threads (default: 16)")
    parser.add_argument("--repeat", type=int, default=3, help="reads per latency, best is kept (default: 3)")
    args = parser.parse_args()
    with moto_process() as moto_url, tempfile.TemporaryDirectory() as scratch:
        use_endpoint(moto_url)
        started = time.monotonic()
        fuse_day(args.videos, args.strategy, args.shard_size, Path(scratch))
        print(f"seeded and fused {args.videos} videos in {time.monotonic() - started:.1f}s", flush=True)
        for latency in (float(v) for v in args.latency.split(",")):
            print(measure(moto_url, args.strategy, latency, args.threads, args.repeat), flush=True)


if __name__ == "__main__":
    main()
