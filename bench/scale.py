"""Corpus scale: what one daily run costs on a bucket that already holds N fused videos.

`python bench/scale.py [--corpus 100k,1M] [--day 1000] [--json PATH] [--profile] [--fresh-rerun]`

For each corpus size: a fresh moto server process; `bench/corpus.py` puts N already-fused videos in the
seed-era formats (a single-file manifest, a SQLite state) and one new day of `--day` videos on it
(directly, not through the proxy). Then the real CLI runs as a separate process behind the
byte-counting proxy (`bench/byteproxy.py`), three times:
- "upgrade": `clipfarm-fusion run --run-date 2026-02-28 ...`, the day before the new one: the first run
  of this version imports the seed-era files into the lake tables (O(corpus), once) and fuses nothing;
- "first": `--run-date 2026-03-01`, the measured day of `--day` new videos;
- "rerun": the same command again, with nothing new.
`--fresh-rerun` adds a fourth run, again with nothing new, from an empty --state-dir (a scheduler that
gives every run a new container). `--new-strategy S` adds a last run of strategy S on the same date: a
strategy added to an existing corpus, whose first day holds every video of the horizon.

Measured per run:
- *wall*: from spawning the CLI process to its exit (interpreter start and imports included, ~2 s);
  the pipeline's own figure (`seconds` of --summary-json) is kept in the JSON too;
- *peak RSS*: the run's own VmHWM, written by `bench/peak.py`, which runs the CLI in its process (a
  child's `ru_maxrss` starts at its parent's size at spawn, and this harness, whose proxy buffers every
  body, grows to GBs at 3M; under `--profile` it falls back to `ru_maxrss`);
- *written*: bytes of request bodies on the wire (PUT/POST), by kind of object; *read*: response bodies;
- requests by method; the CLI's log lines with their offsets, which show where the time goes.
`--profile` runs both CLI processes under cProfile (main thread only; it slows pandas-heavy phases, so the
table is marked) and prints the top 15 cumulative entries of each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from byteproxy import start_byte_proxy  # noqa: E402
from common import BENCH_DIR, machine, moto_process, use_endpoint  # noqa: E402
from corpus import RUN_DATE, parse_count  # noqa: E402
from proxy import METHODS  # noqa: E402

CLI = str(Path(sys.executable).with_name("clipfarm-fusion"))
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*)$")


def run_cli(
    endpoint: str,
    bucket: str,
    state_dir: Path,
    strategy: str,
    out_dir: Path,
    label: str,
    timeout: float,
    profile: bool = False,
    run_date=RUN_DATE,
) -> dict:
    """One `clipfarm-fusion run` in its own process: wall, that process's peak RSS and CPU, summary, log."""
    summary_path = out_dir / f"{label}.summary.json"
    args = [
        "run",
        "--run-date",
        run_date.isoformat(),
        "--strategy",
        strategy,
        "--bucket",
        bucket,
        "--state-dir",
        str(state_dir),
        "--summary-json",
        str(summary_path),
    ]
    profile_path = out_dir / f"{label}.prof"
    peak_path = out_dir / f"{label}.peak"
    command = (
        [sys.executable, "-m", "cProfile", "-o", str(profile_path), CLI, *args]
        if profile
        else [sys.executable, str(Path(__file__).with_name("peak.py")), str(peak_path), *args]
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    stdout, stderr = out_dir / f"{label}.stdout", out_dir / f"{label}.stderr"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        started_wall, started = datetime.now(), time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    log_lines = []
    for line in stderr.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            log_lines.append(f"{(stamp - started_wall).total_seconds():7.2f}s {match.group(4)[:160]}")
    result = {
        "label": label,
        "exit_code": process.returncode,
        "seconds": round(seconds, 2),
        # the run's own high-water mark (bench/peak.py); ru_maxrss would start at this harness's size
        "peak_rss_mb": float(peak_path.read_text())
        if peak_path.exists()
        else round(usage.ru_maxrss / 1024, 1),
        "cpu_user_s": round(usage.ru_utime, 2),
        "cpu_sys_s": round(usage.ru_stime, 2),
        "log": log_lines,
        "stderr_tail": "" if process.returncode == 0 else stderr.read_text(errors="replace")[-3000:],
    }
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        result["pipeline_seconds"] = summary.get("seconds")
        result["strategies"] = {
            name: {
                k: s.get(k)
                for k in (
                    "delta",
                    "counts",
                    "upgrade_checked",
                    "deferred",
                    "manifest_added",
                    "manifest_updated",
                    "state_source",
                )
            }
            | {"shards_written": len(s.get("shards_written", []))}
            for name, s in summary.get("strategies", {}).items()
        }
    if profile and profile_path.exists():
        result["profile_top15"] = top_cumulative(profile_path)
    return result


def top_cumulative(path: Path, count: int = 15) -> str:
    """The top `count` entries by cumulative time, leaving out the call chain that spans the whole run
    (the script, cli.main, pipeline.run: over 90% of the total each), which would fill the list."""
    stats = pstats.Stats(str(path), stream=io.StringIO()).sort_stats("cumulative")
    total = stats.total_tt
    lines = [f"cProfile (main thread) {total:.1f}s; top {count} cumulative below the run's own chain:"]
    lines.append(f"{'cumtime':>8} {'tottime':>8} {'calls':>8}  function")
    shown = 0
    for func in stats.fcn_list:
        _, calls, tottime, cumtime, _ = stats.stats[func]
        if cumtime > 0.9 * total:
            continue
        filename, line, name = func
        where = re.sub(r".*/(site-packages|lib/python3\.\d+|main)/", "", filename)
        lines.append(f"{cumtime:8.2f} {tottime:8.2f} {calls:>8}  {where}:{line}({name})")
        shown += 1
        if shown == count:
            break
    lines.append("the run's phases (cumulative s, main thread):")
    for func, (_, calls, _, cumtime, _) in sorted(stats.stats.items(), key=lambda item: -item[1][3]):
        filename, _, name = func
        module = Path(filename).stem
        if "clipfarm_fusion" in filename and f"{module}.{name}" in PHASES:
            lines.append(f"{cumtime:8.2f} {'':8} {calls:>8}  {module}.{name}")
    return "\n".join(lines)


PHASES = {
    "metadata.scan",
    "text_state.open_text_state",
    "state.open_store",
    "state.known",
    "state.rows_for",
    "manifest.open_table",
    "plan._select",
    "delta.compute",
    "chunk.run_all",
    "commit.commit",
    "manifest.commit",
    "state.commit",
}


def measured(proxy, **kwargs) -> dict:
    """run_cli behind `proxy`, whose counters are reset first; adds requests and bytes."""
    proxy.reset()
    result = run_cli(proxy.url, **kwargs)
    counts = proxy.counts()
    result["requests"] = {m: counts.get(m, 0) for m in METHODS}
    result["bytes_written"] = counts.get("bytes_up", 0)
    result["bytes_read"] = counts.get("bytes_down", 0)
    result["written_by_kind"] = {
        k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("bytes_up:") and v
    }
    result["read_by_kind"] = {
        k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("bytes_down:") and v
    }
    return result


def one_corpus(n: int, args, scratch: Path) -> dict:
    bucket = f"scale-{n}"
    out_dir = scratch / f"corpus-{n}"
    out_dir.mkdir(parents=True)
    with moto_process() as moto_url:
        use_endpoint(moto_url)
        print(f"[{n:,}] generating ...", flush=True)
        # in its own process: a child's peak RSS (ru_maxrss) starts at its parent's size when it is
        # spawned, so a parent holding a generated corpus would inflate every measured run
        generated = out_dir / "corpus.json"
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("corpus.py")),
                *("--endpoint", moto_url, "--bucket", bucket, "--corpus", str(n), "--day", str(args.day)),
                *("--strategies", args.strategy, "--placeholder-share", str(args.placeholder_share)),
                *("--json", str(generated)),
            ],
            check=True,
        )
        info = json.loads(generated.read_text())
        proxy = start_byte_proxy(moto_url)
        runs = {}
        try:
            state_dir = out_dir / "state"
            day_before = RUN_DATE - timedelta(days=1)
            plan = [
                ("upgrade", state_dir, day_before),
                ("first", state_dir, RUN_DATE),
                ("rerun", state_dir, RUN_DATE),
            ]
            if args.fresh_rerun:
                plan.append(("rerun_fresh_dir", out_dir / "state-fresh", RUN_DATE))
            if args.new_strategy:
                plan.append(("new_strategy", state_dir, RUN_DATE))
            for label, directory, run_date in plan:
                runs[label] = measured(
                    proxy,
                    bucket=bucket,
                    state_dir=directory,
                    strategy=args.new_strategy if label == "new_strategy" else args.strategy,
                    out_dir=out_dir,
                    label=label,
                    timeout=args.timeout,
                    profile=args.profile and label != "upgrade",
                    run_date=run_date,
                )
                print(f"[{n:,}] {describe(label, runs[label])}", flush=True)
                if runs[label]["exit_code"] != 0:
                    print(runs[label]["stderr_tail"], flush=True)
                    break
        finally:
            proxy.stop()
    return {"corpus": n, "day": args.day, "generated": info, "runs": runs}


def mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def describe(label: str, run: dict) -> str:
    req = ", ".join(f"{m} {run['requests'][m]}" for m in METHODS if run["requests"][m])
    strategies = run.get("strategies", {})
    detail = "; ".join(
        f"{name}: delta {s['delta']}, {s['counts']}, upgrade_checked {s['upgrade_checked']}, "
        f"manifest +{s['manifest_added']}, shards {s['shards_written']}, state: {s['state_source']}"
        for name, s in strategies.items()
    )
    return (
        f"{label}: exit {run['exit_code']}, wall {run['seconds']:.1f}s "
        f"(pipeline {run.get('pipeline_seconds')}s), "
        f"peak RSS {run['peak_rss_mb']:.0f} MB, cpu {run['cpu_user_s']:.1f}+{run['cpu_sys_s']:.1f}s, "
        f"written {mb(run['bytes_written'])} { ({k: mb(v) for k, v in run['written_by_kind'].items()}) }, "
        f"read {mb(run['bytes_read'])} { ({k: mb(v) for k, v in run['read_by_kind'].items()}) }, "
        f"requests {req}; {detail}"
    )


def table(results: list[dict], profiled: bool) -> str:
    lines = [
        "| corpus | wall | peak RSS | written per run | rerun with nothing new (wall, RSS) | upgrade run, once (wall, RSS, written) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        first, rerun = result["runs"].get("first"), result["runs"].get("rerun")
        if not first or first["exit_code"]:
            lines.append(f"| {result['corpus']:,} | failed (exit {first and first['exit_code']}) | | | |")
            continue
        again = f"{rerun['seconds']:.1f} s / {rerun['peak_rss_mb']:,.0f} MB" if rerun else "—"
        upgrade = result["runs"].get("upgrade")
        once = (
            f"{upgrade['seconds']:.1f} s / {upgrade['peak_rss_mb']:,.0f} MB / {mb(upgrade['bytes_written'])}"
            if upgrade
            else "—"
        )
        lines.append(
            f"| {result['corpus']:,} | {first['seconds']:.1f} s | {first['peak_rss_mb']:,.0f} MB | "
            f"{mb(first['bytes_written'])} | {again} | {once} |"
        )
    if profiled:
        lines.append("(under cProfile: walls and RSS are inflated)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="100k,1M", help="comma-separated sizes: 100000, 100k, 1M, 3M")
    parser.add_argument("--day", type=parse_count, default=1000, help="new videos on the run date")
    parser.add_argument("--strategy", default="concat")
    parser.add_argument("--placeholder-share", type=float, default=0.10, help="share of no_captions videos")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a CLI run is killed")
    parser.add_argument("--fresh-rerun", action="store_true", help="also rerun from an empty --state-dir")
    parser.add_argument(
        "--new-strategy",
        default=None,
        help="last, a run of this strategy (e.g. sum_pool): its first day covers the whole corpus",
    )
    parser.add_argument(
        "--profile", action="store_true", help="run the CLI under cProfile (top 15 cumulative)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="default: bench/results/scale-<timestamp>.json"
    )
    args = parser.parse_args()
    sizes = [parse_count(s) for s in args.corpus.split(",") if s.strip()]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.json or BENCH_DIR / "results" / f"scale-{stamp}.json"
    results = []
    with tempfile.TemporaryDirectory(prefix="scale-") as scratch:
        for n in sizes:
            results.append(one_corpus(n, args, Path(scratch)))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps(
                    {"when": stamp, "machine": machine(), "args": vars(args), "results": results},
                    indent=2,
                    default=str,
                )
            )
    print(f"\nday of {args.day:,} new videos, run_date {RUN_DATE}, strategy {args.strategy}, {machine()}\n")
    print(table(results, args.profile))
    for result in results:
        print(f"\ncorpus {result['corpus']:,}:")
        for label, run in result["runs"].items():
            print("  " + describe(label, run))
            print("    log: " + "\n         ".join(run["log"]))
            if run.get("profile_top15"):
                print(run["profile_top15"])
    print(f"\nresults written to {out}")
    failed = any(run["exit_code"] for r in results for run in r["runs"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
