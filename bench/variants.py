"""Proposed pipeline changes, applied as patches inside a benchmark child so they can be measured
A/B without touching `clipfarm_fusion/` (bench/ must not change the package; the report proposes).

`one_wave`: (1) one long-lived fetch pool for the whole run instead of a new ThreadPoolExecutor per
`s3io.get_many` call (each new pool starts up to 32 threads lazily, one `Thread.start()` wait per
thread, three times per batch); (2) video and audio GETs of a batch in one wave instead of two
back-to-back waves, so the pool does not drain to its slowest request twice.

`python bench/variants.py [--videos 600] [--rounds 3] [--latency 0]` alternates current/one_wave
runs on fresh buckets and prints each run's wall time and requests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def apply(variant: str) -> None:
    if variant == "current":
        return
    if variant != "one_wave":
        raise ValueError(f"unknown variant {variant!r}")
    from clipfarm_fusion.run import fetch as fetch_stage
    from clipfarm_fusion.stores import s3io

    pools: dict[int, ThreadPoolExecutor] = {}
    original_get_many = s3io.get_many

    def get_many(client, bucket, keys, threads, on_done=None):
        def fetch(key):
            try:
                return key, s3io.get_object(client, bucket, key).body
            except Exception as exc:  # noqa: BLE001 - per-item failure is data
                return key, exc

        unique = list(dict.fromkeys(keys))
        if on_done is not None:
            return original_get_many(client, bucket, unique, threads, on_done)
        pool = pools.setdefault(threads, ThreadPoolExecutor(threads))
        return dict(pool.map(fetch, unique))

    prefetched: dict[str, list] = {}
    original_fetch = fetch_stage._fetch

    def fetch(client, config, layout, modality, ids, keys_per_item):
        if modality == "video":
            keys = [layout.embedding_key(m, v) for m in ("video", "audio") for v in ids]
            bodies = s3io.get_many(client, config.bucket, keys, config.fetch_threads)
            prefetched["audio"] = [bodies[layout.embedding_key("audio", v)] for v in ids]
            return [bodies[layout.embedding_key("video", v)] for v in ids]
        if modality == "audio" and "audio" in prefetched:
            return prefetched.pop("audio")
        return original_fetch(client, config, layout, modality, ids, keys_per_item)

    s3io.get_many = get_many
    fetch_stage._fetch = fetch


def main() -> None:
    parser = argparse.ArgumentParser(
        description="A/B the one_wave fetch proposal against the current pipeline."
    )
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    from common import moto_process
    from proxy import METHODS, start_proxy
    from run import Bench

    with moto_process() as url, tempfile.TemporaryDirectory() as scratch:
        bench = Bench(url, args.videos, Path(scratch))
        proxy = start_proxy(url, latency_ms=args.latency)
        times: dict[str, list[float]] = {"current": [], "one_wave": []}
        for _ in range(args.rounds):
            for variant in times:
                seeded = bench.fresh()
                proxy.reset()
                result = bench.ours(proxy.url, seeded, ["concat"], variant=variant)
                requests = sum(proxy.counts()[m] for m in METHODS)
                times[variant].append(result["seconds"])
                print(f"{variant:9s} {result['seconds']:6.2f}s  {requests} requests  fused {result['fused']}")
        proxy.stop()
    for variant, seconds in times.items():
        print(f"{variant:9s} best {min(seconds):.2f}s  median {sorted(seconds)[len(seconds) // 2]:.2f}s")


if __name__ == "__main__":
    main()
