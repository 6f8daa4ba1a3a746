"""The end-to-end benchmark: ours (one strategy, all), the naive baseline and the GET floor, side by side.

`python bench/run.py [--videos 600] [--latency 0,20] [--json bench/results/X.json] [--profile]`

Starts a moto server process and the counting proxy (bench/proxy.py), then for each latency runs,
each in a fresh process on a freshly seeded bucket so every run does the whole day:
ours with one strategy, ours with all three, the naive script, and the floor (concurrent GETs of
just the objects that exist, best of several pool widths). Requests are counted on the wire by the
proxy. Ours is then checked against the naive run: same status per video, bit-identical vectors;
any difference is printed as RESULT MISMATCH and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import BENCH_DIR, machine, moto_process, use_endpoint  # noqa: E402
from proxy import METHODS, start_proxy  # noqa: E402
from seed import RUN_DATE, make, seed_day  # noqa: E402

from clipfarm_fusion import read_state  # noqa: E402
from clipfarm_fusion.core.kernels import DEFAULT_STRATEGIES as STRATEGY_NAMES  # noqa: E402 - what "all" runs
from clipfarm_fusion.stores import (
    s3io,  # noqa: E402
    shards,
)

COLUMNS = ("ours_one", "ours_all", "naive", "floor")


def child(worker: str, **kwargs) -> dict:
    """Run one worker in its own interpreter; its last stdout line is its JSON result."""
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "workers.py"), worker, json.dumps(kwargs)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"{worker} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Bench:
    """Owns the server, the seeding client and a scratch dir; hands out freshly seeded buckets."""

    def __init__(self, moto_url: str, videos: int, scratch: Path) -> None:
        self.moto_url, self.videos, self.scratch = moto_url, videos, scratch
        use_endpoint(moto_url)
        self.client = s3io.make_client(16)
        self.made = make(videos)
        self.buckets = 0

    def fresh(self):
        self.buckets += 1
        return seed_day(self.client, f"bench-{self.buckets:03d}", "clipfarm", self.videos, made=self.made)

    def ours(
        self, endpoint: str, seeded, strategies, profile: str | None = None, variant: str = "current"
    ) -> dict:
        state_dir = self.scratch / f"state-{seeded.bucket}"
        result = child(
            "ours",
            endpoint=endpoint,
            bucket=seeded.bucket,
            root=seeded.root,
            strategies=list(strategies),
            state_dir=str(state_dir),
            run_date=RUN_DATE.isoformat(),
            profile=profile,
            variant=variant,
        )
        return {**result, "bucket": seeded.bucket, "state_dir": str(state_dir)}

    def naive(self, endpoint: str, seeded, strategies) -> dict:
        out = self.scratch / f"naive-{seeded.bucket}"
        result = child(
            "naive",
            endpoint=endpoint,
            bucket=seeded.bucket,
            root=seeded.root,
            strategies=list(strategies),
            out=str(out),
            run_date=RUN_DATE.isoformat(),
        )
        return {**result, "bucket": seeded.bucket, "out": str(out)}

    def ours_outputs(self, bucket: str, state_dir: str, strategy: str):
        """(status per video_id from the state table, vector per video_id from the shards on S3)."""
        items = read_state(strategy, bucket=bucket, client=self.client)
        statuses = dict(zip(items["video_id"], items["status"], strict=True))
        vectors = {}
        for key in s3io.list_keys(self.client, bucket, f"clipfarm/fused/{strategy}/shards/"):
            shard = shards.decode(s3io.get_object(self.client, bucket, key).body)
            vectors.update(zip(shard["video_ids"].tolist(), shard["vectors"], strict=True))
        return statuses, vectors


def compare(label: str, ours: tuple[dict, dict], reference: tuple[dict, dict]) -> list[str]:
    """Differences between ours and the naive reference: statuses, then vector ids and bits."""
    (ours_status, ours_vec), (ref_status, ref_vec) = ours, reference
    problems = []
    ids = sorted(set(ours_status) | set(ref_status))
    differing = [v for v in ids if ours_status.get(v) != ref_status.get(v)]
    if differing:
        sample = ", ".join(f"{v}: ours={ours_status.get(v)} naive={ref_status.get(v)}" for v in differing[:5])
        problems.append(f"{label}: {len(differing)} statuses differ ({sample})")
    if set(ours_vec) != set(ref_vec):
        problems.append(f"{label}: fused ids differ: {len(set(ours_vec) ^ set(ref_vec))} not in both")
    unequal = [
        v for v in set(ours_vec) & set(ref_vec) if np.asarray(ours_vec[v]).tobytes() != ref_vec[v].tobytes()
    ]
    if unequal:
        problems.append(f"{label}: {len(unequal)} vectors not bit-identical (e.g. {sorted(unequal)[:3]})")
    return problems


def verify(bench: Bench, ours: dict, naive: dict, strategies, label: str) -> list[str]:
    import naive as baseline

    problems = []
    for strategy in strategies:
        mine = bench.ours_outputs(ours["bucket"], ours["state_dir"], strategy)
        reference = baseline.read_output(Path(naive["out"]) / f"naive_{strategy}.sqlite")
        problems += compare(f"{label} {strategy}", mine, reference)
        invalid = ours["counts"][strategy].get("invalid_video_id", 0)
        if invalid != naive["counts"].get("invalid_video_id", 0):
            problems.append(f"{label} {strategy}: invalid_video_id {invalid} vs naive {naive['counts']}")
    return problems


def measure(bench: Bench, latency: float, strategy: str, floor_threads: list[int], repeat: int) -> dict:
    """Every column at one latency, each behind a proxy whose counters were just reset. Ours is
    best of `repeat` runs, as the floor is best of its pool widths, so noise does not favour either."""
    proxy = start_proxy(bench.moto_url, latency_ms=latency)
    runs: dict[str, dict] = {}
    try:
        for column, work in (
            ("ours_one", lambda s: bench.ours(proxy.url, s, [strategy])),
            ("ours_all", lambda s: bench.ours(proxy.url, s, STRATEGY_NAMES)),
            ("naive", lambda s: bench.naive(proxy.url, s, [strategy])),
        ):
            for _ in range(repeat if column != "naive" else 1):
                seeded = bench.fresh()
                proxy.reset()
                result = {**work(seeded), "requests": proxy.counts()}
                if column not in runs or result["seconds"] < runs[column]["seconds"]:
                    runs[column] = result
                print(f"  {latency:g} ms {column}: {result['seconds']:.2f}s", flush=True)
        keys_file = bench.scratch / "floor_keys.json"
        keys_file.write_text(json.dumps(seeded.object_keys))
        floors = []
        for threads in floor_threads:
            proxy.reset()
            result = child(
                "floor", endpoint=proxy.url, bucket=seeded.bucket, keys_file=str(keys_file), threads=threads
            )
            floors.append({**result, "requests": proxy.counts(), "fused": runs["naive"]["fused"]})
            print(f"  {latency:g} ms floor x{threads}: {result['seconds']:.2f}s", flush=True)
        runs["floor"] = min(floors, key=lambda r: r["seconds"])
        runs["floor"]["all_threads"] = {r["threads"]: round(r["seconds"], 3) for r in floors}
    finally:
        proxy.stop()
    for run in runs.values():
        run["requests_total"] = sum(run["requests"][m] for m in METHODS)
        run["requests_per_fused"] = run["requests_total"] / max(1, run["fused"])
        run["items_per_s"] = run["fused"] / run["seconds"]
    return runs


def targets(results: dict[str, dict], videos: int) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every contract figure that applies to this run."""
    rows = []
    for latency, runs in results.items():
        one, every, naive, floor = (runs[c] for c in COLUMNS)
        heads = one["requests"]["HEAD"] + every["requests"]["HEAD"]
        rows.append((f"{latency} ms: HEAD requests = 0", str(heads), heads == 0))
        per_item = one["requests_per_fused"]
        label = f"{latency} ms: requests/fused item, one strategy <= 3.5" + (
            "" if videos == 600 else f" ({videos} videos)"
        )
        rows.append((label, f"{per_item:.2f} (naive {naive['requests_per_fused']:.2f})", per_item <= 3.5))
        ratio = every["requests_total"] / one["requests_total"]
        rows.append((f"{latency} ms: requests all / one <= 1.05", f"{ratio:.3f}", ratio <= 1.05))
        vs_floor = one["seconds"] / floor["seconds"]
        rows.append((f"{latency} ms: wall ours / floor <= 1.5", f"{vs_floor:.2f}", vs_floor <= 1.5))
        speedup = naive["seconds"] / one["seconds"]
        need = {0.0: 3.0, 20.0: 10.0}.get(float(latency))
        if need:
            rows.append((f"{latency} ms: speed vs naive >= {need:g}x", f"{speedup:.1f}x", speedup >= need))
    return rows


def table(results: dict[str, dict], strategy: str) -> str:
    heads = {
        "ours_one": f"ours {strategy}",
        "ours_all": "ours all",
        "naive": f"naive {strategy}",
        "floor": "floor",
    }
    lines = []
    for latency, runs in results.items():
        floor = runs["floor"]
        rows = [(m, [str(runs[c]["requests"][m]) for c in COLUMNS]) for m in METHODS]
        rows += [
            ("requests", [str(runs[c]["requests_total"]) for c in COLUMNS]),
            ("connections", [str(runs[c]["requests"].get("connections", 0)) for c in COLUMNS]),
            ("fused items", [str(runs[c]["fused"]) for c in COLUMNS]),
            ("requests/fused", [f"{runs[c]['requests_per_fused']:.2f}" for c in COLUMNS]),
            ("wall s", [f"{runs[c]['seconds']:.2f}" for c in COLUMNS]),
            ("cpu s (client)", [f"{runs[c]['cpu_seconds']:.2f}" for c in COLUMNS]),
            ("items/s", [f"{runs[c]['items_per_s']:.0f}" for c in COLUMNS]),
            ("peak RSS MB", [f"{runs[c]['peak_rss_mb']:.0f}" for c in COLUMNS]),
        ]
        names = [heads[c] + (f" x{floor['threads']}" if c == "floor" else "") for c in COLUMNS]
        width = max(len(r[0]) for r in rows)
        cols = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
        lines.append(f"latency {latency} ms per request")
        lines.append("  ".join([" " * width, *(n.rjust(w) for n, w in zip(names, cols, strict=True))]))
        lines += [
            "  ".join([r[0].ljust(width), *(v.rjust(w) for v, w in zip(r[1], cols, strict=True))])
            for r in rows
        ]
        one, every, naive = runs["ours_one"], runs["ours_all"], runs["naive"]
        lines.append(
            f"ratios: ours/floor {one['seconds'] / floor['seconds']:.2f}  "
            f"naive/ours {naive['seconds'] / one['seconds']:.1f}x  "
            f"all/one requests {every['requests_total'] / one['requests_total']:.3f}  "
            f"all/one wall {every['seconds'] / one['seconds']:.2f}  "
            f"floor by threads {floor['all_threads']}"
        )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--latency", default="0,20", help="comma-separated ms per request (default: 0,20)")
    parser.add_argument("--strategy", default="concat", help="the one-strategy run (default: concat)")
    parser.add_argument("--floor-threads", default="8,16,32,64")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each ours column, best kept")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/<timestamp>.json")
    parser.add_argument("--profile", action="store_true", help="also profile one run of ours at 0 ms")
    args = parser.parse_args()
    latencies = [float(x) for x in args.latency.split(",")]
    floor_threads = [int(x) for x in args.floor_threads.split(",")]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.json or BENCH_DIR / "results" / f"{stamp}.json"
    started = time.monotonic()
    problems: list[str] = []
    results: dict[str, dict] = {}
    with moto_process() as moto_url, tempfile.TemporaryDirectory() as scratch:
        bench = Bench(moto_url, args.videos, Path(scratch))
        for latency in latencies:
            runs = measure(bench, latency, args.strategy, floor_threads, args.repeat)
            results[f"{latency:g}"] = runs
            problems += verify(bench, runs["ours_one"], runs["naive"], [args.strategy], f"{latency:g} ms")
        check_all = bench.naive(moto_url, bench.fresh(), STRATEGY_NAMES)
        problems += verify(bench, results[f"{latencies[0]:g}"]["ours_all"], check_all, STRATEGY_NAMES, "all")
        profile_path = None
        if args.profile:
            profile_path = out.with_suffix(".profile.txt")
            profile_path.parent.mkdir(parents=True, exist_ok=True)
            bench.ours(moto_url, bench.fresh(), [args.strategy], profile=str(profile_path))
    report = table(results, args.strategy)
    met = targets(results, args.videos)
    print(f"\n{args.videos} videos, run_date {RUN_DATE}, {machine()}\n")
    print(report)
    for name, measured, ok in met:
        print(f"{'MET   ' if ok else 'MISSED'}  {name}: {measured}")
    for problem in problems:
        print(f"RESULT MISMATCH: {problem}")
    if not problems:
        print("results: ours == naive (statuses per video, vectors bit-identical) for every strategy checked")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "machine": machine(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
                "targets": [{"target": n, "measured": m, "met": ok} for n, m, ok in met],
                "mismatches": problems,
                "profile": str(profile_path) if profile_path else None,
                "bench_seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
            default=str,
        )
    )
    print(f"results written to {out}" + (f"; profile in {profile_path}" if profile_path else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
