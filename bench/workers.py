"""One measured run per process: ours, the naive baseline or the GET floor. Prints one JSON line.

Each run gets a process of its own so its peak RSS (getrusage of that very process) is its own
figure, not the harness's or a previous run's, and so no two runs share a GIL or a warm client.
Wall time is taken around the work itself, not the interpreter start or the imports.

`python bench/workers.py ours|naive|floor '<json kwargs>'`; `bench/run.py` is the usual caller.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import peak_rss_mb, use_endpoint  # noqa: E402


def ours(
    endpoint: str,
    bucket: str,
    root: str,
    strategies: list[str],
    state_dir: str,
    run_date: str,
    shard_size: int = 2048,
    profile: str | None = None,
    variant: str = "current",
) -> dict:
    """pipeline.run() on a fresh state dir; `profile` = path for a cProfile report covering all threads."""
    use_endpoint(endpoint)
    import variants

    from clipfarm_fusion.run import pipeline

    variants.apply(variant)
    from clipfarm_fusion.config import FusionConfig

    config = FusionConfig(
        bucket=bucket,
        root=root,
        strategies=tuple(strategies),
        state_dir=Path(state_dir),
        shard_size=shard_size,
    )
    profilers = _profile_threads() if profile else None
    started, cpu = time.monotonic(), time.process_time()
    summary = pipeline.run(config, date.fromisoformat(run_date))
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    if profilers is not None:
        _write_profile(profilers, profile)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "fused": max(s.fused for s in summary.strategies.values()),
        "counts": {name: s.counts for name, s in summary.strategies.items()},
        "peak_rss_mb": peak_rss_mb(),
    }


def naive(endpoint: str, bucket: str, root: str, strategies: list[str], out: str, run_date: str) -> dict:
    use_endpoint(endpoint)
    import naive as baseline

    return baseline.run(bucket, root, date.fromisoformat(run_date), strategies, Path(out))


def floor(endpoint: str, bucket: str, keys_file: str, threads: int) -> dict:
    """GET every existing object once, `threads` at a time, reading each body: the least any run can do."""
    use_endpoint(endpoint)
    from clipfarm_fusion.stores import s3io

    keys = json.loads(Path(keys_file).read_text())
    started, cpu = time.monotonic(), time.process_time()
    client = s3io.make_client(threads)

    def get(key: str) -> int:
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, keys))
    return {
        "seconds": time.monotonic() - started,
        "cpu_seconds": time.process_time() - cpu,
        "bytes": total,
        "threads": threads,
        "peak_rss_mb": peak_rss_mb(),
    }


def _profile_threads() -> list[cProfile.Profile]:
    """cProfile sees only the thread that enabled it, so the main thread gets a wall-clock profiler
    (where the run waits) and every new thread (the fetch pools) a CPU-time one (where the cores go),
    merged per kind in the report. Returns [main, *threads]."""
    profilers: list[cProfile.Profile] = []
    original_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profiler = cProfile.Profile(time.thread_time)
        profilers.append(profiler)
        profiler.enable()
        try:
            original_run(self)
        finally:
            profiler.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main = cProfile.Profile()
    profilers.append(main)
    main.enable()
    return profilers


def _write_profile(profilers: list[cProfile.Profile], path: str) -> None:
    main, *threads = profilers
    main.disable()
    report = io.StringIO()
    report.write("=== main thread, wall clock ===\n")
    pstats.Stats(main, stream=report).sort_stats("cumulative").print_stats(45)
    if threads:
        report.write(f"=== {len(threads)} pool threads merged, CPU time (time.thread_time) ===\n")
        pooled = pstats.Stats(threads[0], stream=report)
        for profiler in threads[1:]:
            pooled.add(profiler)
        pooled.sort_stats("tottime").print_stats(30)
    Path(path).write_text(report.getvalue())


def imports() -> dict:
    """The RSS floor of any run of ours: the interpreter plus the pipeline's imports."""
    import clipfarm_fusion.run.pipeline  # noqa: F401

    return {"peak_rss_mb": peak_rss_mb()}


WORKERS = {"ours": ours, "naive": naive, "floor": floor, "imports": imports}

if __name__ == "__main__":
    result = WORKERS[sys.argv[1]](**json.loads(sys.argv[2]))
    print(json.dumps(result))
