"""Fan-out: what cutting a day into chunks costs (requests, CPU) and buys (throughput), CLI and Dagster.

`python bench/fanout.py [--videos 2000] [--chunks 8 | --chunk-size M] [--workers 1,2,4] [--latency 0,20]
[--max-concurrent 1,2,4] [--parts requests,cpu,scaling,dagster] [--dagster-checks] [--json PATH]`

A moto server in its own process, the counting proxy (bench/proxy.py) in this one, one synthetic day
(`bench/seed.py`). Every run is a separate process on a freshly seeded bucket (deleted afterwards, so
moto's memory stays flat) with a fresh state dir:

- **cli**: `clipfarm-fusion run --chunk-size M --workers N` (through bench/peak.py for the plan/commit
  process's own peak RSS);
- **dagster**: this file as `_dagster`: `execute_job(reconstructable(fuse_daily).get_subset(concat), ...)`
  under `CLIPFARM_EXECUTOR=multiprocess CLIPFARM_MAX_CONCURRENT=n`, in a temp DAGSTER_HOME holding the
  repo's dagster_home/dagster.yaml, with the bucket, root, chunk_size and endpoint as resource run config.
  The blocking output checks are left out unless `--dagster-checks` (they read what the run published:
  not part of fusing, and not in the CLI's figures).

Per run: requests by method on the wire; CPU as user+sys of the whole process tree (a
`getrusage(RUSAGE_CHILDREN)` delta around the child, which includes spawned workers and step processes
once reaped); moto's CPU (from /proc) and the proxy's (this process's) over the same span; wall of the
child process and of the run itself (the summary's `seconds` for the CLI, `execute_job` for Dagster).
The parts:

1. requests per fused item, one chunk vs N chunks (`--workers 1`), and the extra requests per chunk;
2. CPU per fused item, one chunk vs N chunks, workers 1 vs 2, raw and net of process starts (each
   process pays the imports once: measured here as `python -c "import ..."`);
3. throughput against `--workers` at each latency, with what limits it (moto's request rate, cores);
4. the same day through Dagster's multiprocess executor at each max_concurrent and latency.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, CREDENTIALS, machine, moto_process, use_endpoint  # noqa: E402
from proxy import METHODS, start_proxy  # noqa: E402
from seed import RUN_DATE, make, seed_day  # noqa: E402

REPO = BENCH_DIR.parent
CLI_IMPORTS = "import clipfarm_fusion.cli.main, clipfarm_fusion.run.pipeline"
DAGSTER_IMPORTS = "import clipfarm_fusion.defs.definitions"
PARTS = ("requests", "cpu", "scaling", "dagster")
FUSED = ("success_full", "success_text_placeholder")
_CHUNKS_LOGGED = re.compile(r"videos to look at in (\d+) chunks")
_TICK = os.sysconf("SC_CLK_TCK")


# -- the Dagster side: runs in the `_dagster` child and, through reconstructable(), in every step process


def fuse_daily():
    """The code location's daily job (`defs/schedules.py`), resolved with the location's resources and
    the executor `CLIPFARM_EXECUTOR` names; module-level so `reconstructable` can rebuild it in a step."""
    from clipfarm_fusion.defs.definitions import defs

    return defs.resolve_job_def("fuse_daily")


def dagster_child(
    endpoint: str,
    bucket: str,
    root: str,
    strategy: str,
    chunk_size: int,
    state_dir: str,
    partition: str,
    checks: bool,
    out: str,
) -> None:
    """Materialise one partition of `strategy` and write {seconds, success, fused, steps} to `out`."""
    from dagster import AssetCheckKey, AssetKey, DagsterInstance, execute_job, reconstructable

    from clipfarm_fusion.defs.checks import FAIL_RATE

    job = reconstructable(fuse_daily).get_subset(
        asset_selection={AssetKey(strategy)},
        asset_check_selection=None if checks else {AssetCheckKey(AssetKey(strategy), FAIL_RATE)},
    )
    run_config = {
        "resources": {
            "fusion": {
                "config": {
                    "bucket": bucket,
                    "root": root,
                    "chunk_size": chunk_size,
                    "endpoint_url": endpoint,
                    "state_dir": state_dir,
                }
            }
        }
    }
    with DagsterInstance.get() as instance:
        started = time.monotonic()
        result = execute_job(job, instance, run_config=run_config, tags={"dagster/partition": partition})
        seconds = time.monotonic() - started
        fused = sum(
            int(e.materialization.metadata["fused"].value)
            for e in result.get_asset_materialization_events()
            if "fused" in e.materialization.metadata
        )
        steps: dict[str, dict[str, float]] = {}
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event is None or not entry.step_key:
                continue
            kind = event.event_type_value
            if kind == "STEP_START":
                steps.setdefault(entry.step_key, {})["start"] = entry.timestamp
            elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
                steps.setdefault(entry.step_key, {})["end"] = entry.timestamp
        failure = None if result.success else _failure_text(result)
    Path(out).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "success": result.success,
                "fused": fused,
                "steps": steps,
                "failure": failure,
            }
        )
    )


def _failure_text(result) -> str:
    return "\n".join(
        f"{e.step_key}: {e.event_specific_data.error.message.strip()[:500]}"
        for e in result.all_events
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
    )


# -- the harness


@dataclass(frozen=True)
class Cell:
    """One measured run: `kind` cli or dagster; `chunks` "one" or "many"; `parallel` is --workers for
    the CLI and max_concurrent for Dagster."""

    kind: str
    chunks: str
    parallel: int
    latency: float

    @property
    def label(self) -> str:
        name = "workers" if self.kind == "cli" else "max_concurrent"
        return f"{self.kind} {self.chunks} chunk(s) {name}={self.parallel} +{self.latency:g}ms"


class Moto:
    """The moto server's pid (our child process listening on its port), for its CPU time."""

    def __init__(self, url: str) -> None:
        port = url.rsplit(":", 1)[1]
        self.pid = next(pid for pid in _children() if "moto.server" in (cmd := _cmdline(pid)) and port in cmd)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK


def _children() -> list[int]:
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Bench:
    """Owns moto, the generated day, the scratch dir; seeds a fresh bucket per run and measures it."""

    def __init__(self, moto_url: str, args: argparse.Namespace, scratch: Path) -> None:
        from clipfarm_fusion.stores import s3io

        self.moto_url, self.args, self.scratch = moto_url, args, scratch
        use_endpoint(moto_url)
        self.moto = Moto(moto_url)
        self.client = s3io.make_client(16)
        self.made = make(args.videos)
        statuses = self.made[0].expected_status().values()
        self.work = sum(1 for s in statuses if s != "invalid_video_id")  # the plan's union delta
        self.expected_fused = sum(1 for s in statuses if s in FUSED)
        self.chunk_size = args.chunk_size or math.ceil(self.work / args.chunks)
        self.runs = 0

    def chunk_size_for(self, cell: Cell) -> int:
        return max(self.work, 1) if cell.chunks == "one" else self.chunk_size

    def measure(self, cell: Cell, proxy) -> dict:
        """Seed a fresh bucket, run `cell` in a child process behind `proxy`, drop the bucket."""
        self.runs += 1
        bucket = f"fanout-{self.runs:03d}"
        started = time.monotonic()
        seed_day(self.client, bucket, "clipfarm", self.args.videos, made=self.made)
        seeded_in = time.monotonic() - started
        run_dir = self.scratch / bucket
        run_dir.mkdir()
        command, env, read_result = (self._cli if cell.kind == "cli" else self._dagster)(
            cell, bucket, run_dir, proxy.url
        )
        proxy.reset()
        load = os.getloadavg()[0]
        user, system = _children_cpu()
        moto_cpu, proxy_cpu = self.moto.cpu_seconds(), _self_cpu()
        started = time.monotonic()
        with open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
            done = subprocess.run(command, stdout=out, stderr=err, env=env, timeout=self.args.timeout)
        wall = time.monotonic() - started
        after_user, after_system = _children_cpu()
        requests = proxy.counts()
        result = {
            "cell": cell.label,
            "kind": cell.kind,
            "chunks_requested": cell.chunks,
            "parallel": cell.parallel,
            "latency_ms": cell.latency,
            "bucket": bucket,
            "chunk_size": self.chunk_size_for(cell),
            "exit_code": done.returncode,
            "wall_s": round(wall, 3),
            "cpu_user_s": round(after_user - user, 3),
            "cpu_sys_s": round(after_system - system, 3),
            "moto_cpu_s": round(self.moto.cpu_seconds() - moto_cpu, 3),
            "proxy_cpu_s": round(_self_cpu() - proxy_cpu, 3),
            "load_avg_1m_before": round(load, 2),
            "seeded_s": round(seeded_in, 1),
            "requests": {m: requests.get(m, 0) for m in METHODS},
            "connections": requests.get("connections", 0),
        }
        stderr = (run_dir / "stderr").read_text(errors="replace")
        result.update(read_result(stderr))
        self._drop(bucket)
        shutil.rmtree(run_dir, ignore_errors=True)
        if done.returncode or not result.get("success", True):
            raise RuntimeError(f"{cell.label} failed (exit {done.returncode}):\n{stderr[-4000:]}")
        return _derived(result)

    def _cli(self, cell: Cell, bucket: str, run_dir: Path, endpoint: str):
        summary, peak = run_dir / "summary.json", run_dir / "peak"
        command = [
            sys.executable,
            str(BENCH_DIR / "peak.py"),
            str(peak),
            "run",
            *("--bucket", bucket, "--root", "clipfarm", "--run-date", RUN_DATE.isoformat()),
            *("--strategy", self.args.strategy, "--state-dir", str(run_dir / "state")),
            *("--chunk-size", str(self.chunk_size_for(cell)), "--workers", str(cell.parallel)),
            *("--summary-json", str(summary)),
        ]
        env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}

        def read(stderr: str) -> dict:
            if not summary.exists():
                return {"success": False}
            data = json.loads(summary.read_text())
            counts = data["strategies"][self.args.strategy]["counts"]
            logged = _CHUNKS_LOGGED.search(stderr)
            chunks = int(logged.group(1)) if logged else None
            processes = 1 + (min(cell.parallel, chunks) if cell.parallel > 1 and (chunks or 0) > 1 else 0)
            return {
                "fused": sum(counts.get(s, 0) for s in FUSED),
                "chunks": chunks,
                "processes": processes,
                "run_s": data["seconds"],
                "peak_rss_mb": float(peak.read_text()) if peak.exists() else None,
            }

        return command, env, read

    def _dagster(self, cell: Cell, bucket: str, run_dir: Path, endpoint: str):
        home = run_dir / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        out = run_dir / "dagster.json"
        kwargs = {
            "endpoint": endpoint,
            "bucket": bucket,
            "root": "clipfarm",
            "strategy": self.args.strategy,
            "chunk_size": self.chunk_size_for(cell),
            "state_dir": str(run_dir / "state"),
            "partition": RUN_DATE.isoformat(),
            "checks": self.args.dagster_checks,
            "out": str(out),
        }
        command = [sys.executable, str(Path(__file__).resolve()), "_dagster", json.dumps(kwargs)]
        env = {
            **os.environ,
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": endpoint,
            "DAGSTER_HOME": str(home),
            "CLIPFARM_BUCKET": bucket,
            "CLIPFARM_EXECUTOR": "multiprocess",
            "CLIPFARM_MAX_CONCURRENT": str(cell.parallel),
        }

        def read(_stderr: str) -> dict:
            if not out.exists():
                return {"success": False}
            data = json.loads(out.read_text())
            steps = data["steps"]
            # step keys are node handles: `fuse_embeddings.fuse_chunk[chunk_0003]`
            chunk_steps = [s for key, s in steps.items() if ".fuse_chunk[" in key and "end" in s]
            return {
                "success": data["success"],
                "failure": data["failure"],
                "fused": data["fused"],
                "chunks": len(chunk_steps),
                "processes": 1 + len(steps),  # the run's process and one spawned per step
                "run_s": round(data["seconds"], 3),
                "steps": len(steps),
                "steps_total_s": round(sum(s.get("end", 0) - s.get("start", 0) for s in steps.values()), 2),
                "chunk_step_mean_s": round(
                    sum(s["end"] - s["start"] for s in chunk_steps) / max(len(chunk_steps), 1), 2
                ),
                "step_seconds": {k: round(s.get("end", 0) - s.get("start", 0), 2) for k, s in steps.items()},
            }

        return command, env, read

    def _drop(self, bucket: str) -> None:
        """Delete the run's bucket (against moto directly, not counted): moto keeps every body in memory."""
        keys = [
            entry["Key"]
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for entry in page.get("Contents", [])
        ]
        for start in range(0, len(keys), 1000):
            objects = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        self.client.delete_bucket(Bucket=bucket)


def _derived(run: dict) -> dict:
    """Per-item and per-second figures from one run's raw counts."""
    total = sum(run["requests"][m] for m in METHODS)
    cpu = run["cpu_user_s"] + run["cpu_sys_s"]
    fused = max(run["fused"], 1)
    run.update(
        requests_total=total,
        requests_per_fused=round(total / fused, 4),
        cpu_s=round(cpu, 3),
        cpu_ms_per_fused=round(1000 * cpu / fused, 3),
        items_per_s=round(run["fused"] / run["run_s"], 2),
        items_per_s_process=round(run["fused"] / run["wall_s"], 2),
        requests_per_s=round(total / run["run_s"], 1),
        client_cores=round(cpu / run["wall_s"], 2),
        # requests flow only during the run itself: moto's and the proxy's share of that span
        moto_cores=round(run["moto_cpu_s"] / run["run_s"], 2),
        proxy_cores=round(run["proxy_cpu_s"] / run["run_s"], 2),
    )
    return run


def import_cpu(code: str, env: dict[str, str], repeat: int = 2) -> float:
    """CPU (user+sys) of a process that only imports `code`: what every spawned worker or step pays
    before it does any work. Best of `repeat`, the machine being shared."""
    best = math.inf
    for _ in range(repeat):
        user, system = _children_cpu()
        subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True)
        after_user, after_system = _children_cpu()
        best = min(best, after_user - user + after_system - system)
    return round(best, 3)


def plan_cells(args: argparse.Namespace) -> list[Cell]:
    """The runs the selected parts need, each once, grouped by latency (one proxy per latency)."""
    first = args.latencies[0]
    wanted: list[Cell] = []
    if "requests" in args.parts or "cpu" in args.parts:
        wanted += [Cell("cli", "one", 1, first), Cell("cli", "many", 1, first)]
    if "cpu" in args.parts:
        wanted.append(Cell("cli", "many", 2, first))
    if "scaling" in args.parts:
        wanted += [Cell("cli", "many", w, lat) for lat in args.latencies for w in args.workers]
    if "dagster" in args.parts:
        wanted += [Cell("dagster", "many", n, lat) for lat in args.latencies for n in args.max_concurrent]
    unique = list(dict.fromkeys(wanted))
    return sorted(unique, key=lambda c: args.latencies.index(c.latency))


def find(runs: list[dict], kind: str, chunks: str, parallel: int, latency: float) -> dict | None:
    return next(
        (
            r
            for r in runs
            if (r["kind"], r["chunks_requested"], r["parallel"], r["latency_ms"])
            == (kind, chunks, parallel, latency)
        ),
        None,
    )


def render(headers: list[str], rows: list[tuple[str, list[str]]]) -> str:
    width = max(len(r[0]) for r in rows)
    cols = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join([" " * width, *(h.rjust(w) for h, w in zip(headers, cols, strict=True))])]
    lines += [
        "  ".join([name.ljust(width), *(v.rjust(w) for v, w in zip(values, cols, strict=True))])
        for name, values in rows
    ]
    return "\n".join(lines)


def part_requests(runs: list[dict], latency: float) -> tuple[str, dict]:
    one, many = find(runs, "cli", "one", 1, latency), find(runs, "cli", "many", 1, latency)
    if not (one and many):
        return "", {}
    columns = [one, many]
    rows = [(m, [str(r["requests"][m]) for r in columns]) for m in METHODS]
    rows += [
        ("requests", [str(r["requests_total"]) for r in columns]),
        ("chunks", [str(r["chunks"]) for r in columns]),
        ("fused items", [str(r["fused"]) for r in columns]),
        ("requests/fused", [f"{r['requests_per_fused']:.3f}" for r in columns]),
    ]
    extra_chunks = max((many["chunks"] or 1) - (one["chunks"] or 1), 1)
    per_chunk = {m: (many["requests"][m] - one["requests"][m]) / extra_chunks for m in METHODS}
    total_per_chunk = (many["requests_total"] - one["requests_total"]) / extra_chunks
    per_item_net = (many["requests_total"] - extra_chunks * total_per_chunk) / max(many["fused"], 1)
    figures = {
        "requests_per_fused_one_chunk": one["requests_per_fused"],
        "requests_per_fused_many_chunks": many["requests_per_fused"],
        "extra_requests_per_chunk": round(total_per_chunk, 2),
        "extra_per_chunk_by_method": {m: round(v, 2) for m, v in per_chunk.items() if v},
        "requests_per_fused_net_of_chunk_overhead": round(per_item_net, 3),
    }
    text = render(["1 chunk", f"{many['chunks']} chunks"], rows)
    by_method = ", ".join(f"{m} {v:+.2f}" for m, v in per_chunk.items() if v) or "none"
    text += (
        f"\nextra per additional chunk: {total_per_chunk:+.2f} requests ({by_method}); staged objects alone: "
        "+2 PUT (plan: input, chunk: output) +2 GET (chunk: input, commit: output), deletes in one batch"
        f"\nper fused item: {one['requests_per_fused']:.3f} (1 chunk) vs {many['requests_per_fused']:.3f} "
        f"({many['chunks']} chunks); the difference is the chunks' overhead "
        f"({(many['requests_per_fused'] - one['requests_per_fused']):+.3f} per item at "
        f"{many['fused'] / max(many['chunks'] or 1, 1):.0f} fused items per chunk)"
    )
    return text, figures


def part_cpu(runs: list[dict], latency: float, imports_s: float) -> tuple[str, dict]:
    cells = [
        ("1 chunk, w1", find(runs, "cli", "one", 1, latency)),
        ("N chunks, w1", find(runs, "cli", "many", 1, latency)),
        ("N chunks, w2", find(runs, "cli", "many", 2, latency)),
    ]
    cells = [(name, r) for name, r in cells if r]
    if not cells:
        return "", {}
    rows = [
        ("chunks", [str(r["chunks"]) for _, r in cells]),
        ("processes", [str(r["processes"]) for _, r in cells]),
        ("fused items", [str(r["fused"]) for _, r in cells]),
        ("wall s (process)", [f"{r['wall_s']:.2f}" for _, r in cells]),
        ("cpu user s", [f"{r['cpu_user_s']:.2f}" for _, r in cells]),
        ("cpu sys s", [f"{r['cpu_sys_s']:.2f}" for _, r in cells]),
        ("cpu ms/fused", [f"{r['cpu_ms_per_fused']:.2f}" for _, r in cells]),
        ("net of starts ms/fused", [f"{_net_ms(r, imports_s):.2f}" for _, r in cells]),
        ("moto cpu s", [f"{r['moto_cpu_s']:.2f}" for _, r in cells]),
        ("peak RSS MB (main process)", [f"{r['peak_rss_mb'] or 0:.0f}" for _, r in cells]),
    ]
    figures = {
        name: {"cpu_ms_per_fused": r["cpu_ms_per_fused"], "net_ms_per_fused": round(_net_ms(r, imports_s), 3)}
        for name, r in cells
    }
    text = render([name for name, _ in cells], rows)
    text += (
        f"\nprocess start (interpreter + imports) = {imports_s:.2f} s CPU each, measured alone; "
        "'net of starts' subtracts it once per process. 1 chunk with w2 = 1 chunk with w1 (a single chunk "
        "is fused in the CLI's own process)."
    )
    return text, figures


def _net_ms(run: dict, imports_s: float) -> float:
    return 1000 * (run["cpu_s"] - run["processes"] * imports_s) / max(run["fused"], 1)


def part_scaling(
    runs: list[dict], kind: str, latencies: list[float], parallel: list[int], cores: int, start_s: float
):
    """A table per latency (columns: the parallelism) and where the curve flattens, and why."""
    texts, figures = [], {}
    name = "workers" if kind == "cli" else "max_concurrent"
    for latency in latencies:
        cells = [(n, find(runs, kind, "many", n, latency)) for n in parallel]
        cells = [(n, r) for n, r in cells if r]
        if not cells:
            continue
        rows = [
            ("chunks", [str(r["chunks"]) for _, r in cells]),
            ("fused items", [str(r["fused"]) for _, r in cells]),
            ("wall s (process)", [f"{r['wall_s']:.2f}" for _, r in cells]),
            ("wall s (run)", [f"{r['run_s']:.2f}" for _, r in cells]),
            ("items/s (run)", [f"{r['items_per_s']:.1f}" for _, r in cells]),
            ("items/s (process)", [f"{r['items_per_s_process']:.1f}" for _, r in cells]),
            ("requests/fused", [f"{r['requests_per_fused']:.3f}" for _, r in cells]),
            ("requests/s (run)", [f"{r['requests_per_s']:.0f}" for _, r in cells]),
            ("cpu ms/fused", [f"{r['cpu_ms_per_fused']:.2f}" for _, r in cells]),
            ("client cores (process)", [f"{r['client_cores']:.2f}" for _, r in cells]),
            ("moto cores (run)", [f"{r['moto_cores']:.2f}" for _, r in cells]),
            ("proxy cores (run)", [f"{r['proxy_cores']:.2f}" for _, r in cells]),
            ("load avg before", [f"{r['load_avg_1m_before']:.1f}" for _, r in cells]),
        ]
        if kind == "dagster":
            rows += [
                ("steps", [str(r["steps"]) for _, r in cells]),
                ("steps' own s, sum", [f"{r['steps_total_s']:.2f}" for _, r in cells]),
                ("fuse_chunk step s, mean", [f"{r['chunk_step_mean_s']:.2f}" for _, r in cells]),
            ]
        base = cells[0][1]["items_per_s"]
        rows.append(("speed-up", [f"{r['items_per_s'] / base:.2f}x" for _, r in cells]))
        texts.append(f"+{latency:g} ms per request\n" + render([f"{name}={n}" for n, _ in cells], rows))
        texts.append(flattening(cells, cores, start_s))
        figures[f"{latency:g}"] = {
            str(n): {
                k: r[k]
                for k in (
                    "items_per_s",
                    "items_per_s_process",
                    "requests_per_s",
                    "client_cores",
                    "moto_cores",
                )
            }
            for n, r in cells
        }
    return "\n".join(texts), figures


def flattening(cells: list[tuple[int, dict]], cores: int, start_s: float) -> str:
    """Where adding parallelism stops paying (< 15% more items/s than the step before), and what was busy
    there: moto (one Python process: one core at most), the machine's cores, the processes' start-up."""
    knee = next(
        (
            (n, r)
            for (_, prev), (n, r) in zip(cells, cells[1:], strict=False)
            if r["items_per_s"] < 1.15 * prev["items_per_s"]
        ),
        None,
    )
    n, at = knee or max(cells, key=lambda c: c[1]["items_per_s"])
    busy = at["client_cores"] + at["moto_cores"] + at["proxy_cores"]
    why = [
        f"{at['requests_per_s']:.0f} requests/s on the wire (moto's ceiling here: ~150-180/s)",
        f"moto {at['moto_cores']:.2f} of its one core",
        f"client + moto + proxy {busy:.2f} of {cores} cores",
    ]
    if at["processes"] > 1:
        starting = (at["processes"] - 1) * start_s
        why.append(
            f"{at['processes'] - 1} extra processes started: ~{starting:.1f} of {at['cpu_s']:.1f} s client CPU"
        )
    verdict = []
    if at["moto_cores"] >= 0.85:
        verdict.append("moto-bound")
    if busy >= 0.85 * cores:
        verdict.append("CPU-bound")
    if len(cells) == 1:
        where = f"one setting measured ({n})"
    else:
        where = f"flattens at {n}" if knee else f"still rising at {n} (the largest measured)"
    label = f" [{', '.join(verdict)}]" if verdict else ""
    return f"-> {where}{label}: " + "; ".join(why) + "\n"


def part_dagster_vs_cli(runs: list[dict], latencies: list[float], parallel: list[int]) -> str:
    lines = []
    for latency in latencies:
        pairs = []
        for n in parallel:
            cli, dag = find(runs, "cli", "many", n, latency), find(runs, "dagster", "many", n, latency)
            if cli and dag:
                pairs.append(
                    f"{n}: {dag['items_per_s'] / cli['items_per_s']:.2f}x items/s, "
                    f"{dag['cpu_ms_per_fused'] / cli['cpu_ms_per_fused']:.2f}x cpu/item, "
                    f"{dag['requests_total'] - cli['requests_total']:+d} requests"
                )
        if pairs:
            lines.append(f"Dagster vs CLI at +{latency:g} ms (max_concurrent = workers): " + "; ".join(pairs))
    return "\n".join(lines)


def parse_list(text: str, kind=int) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--strategy", default="concat")
    parser.add_argument("--chunks", type=int, default=8, help="chunks of the N-chunk runs (default: 8)")
    parser.add_argument("--chunk-size", type=int, default=None, help="instead of --chunks: videos per chunk")
    parser.add_argument("--workers", default="1,2,4", help="CLI --workers for the scaling part")
    parser.add_argument("--latency", default="0,20", help="ms per request, comma-separated (default: 0,20)")
    parser.add_argument("--max-concurrent", default="1,2,4", help="Dagster multiprocess max_concurrent")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {','.join(PARTS)}")
    parser.add_argument("--dagster-checks", action="store_true", help="also run the blocking output checks")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is killed")
    parser.add_argument(
        "--json", type=Path, default=None, help="default: bench/results/fanout-<timestamp>.json"
    )
    args = parser.parse_args()
    args.workers = parse_list(args.workers)
    args.latencies = parse_list(args.latency, float)
    args.max_concurrent = parse_list(args.max_concurrent)
    args.parts = parse_list(args.parts, str)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.json or BENCH_DIR / "results" / f"fanout-{stamp}.json"
    started = time.monotonic()
    cells = plan_cells(args)
    cores = os.cpu_count() or 1
    runs: list[dict] = []
    with moto_process() as moto_url, tempfile.TemporaryDirectory() as scratch:
        bench = Bench(moto_url, args, Path(scratch))
        print(
            f"{args.videos} videos ({bench.work} to look at, {bench.expected_fused} to fuse), "
            f"chunk size {bench.chunk_size} (~{math.ceil(bench.work / bench.chunk_size)} chunks), "
            f"{len(cells)} runs",
            flush=True,
        )
        imports = {"cli": import_cpu(CLI_IMPORTS, {})}
        if "dagster" in args.parts:
            imports["dagster"] = import_cpu(DAGSTER_IMPORTS, {"CLIPFARM_BUCKET": "unused"})
        print(f"process start CPU (imports alone): {imports}", flush=True)
        for latency in args.latencies:
            proxy = start_proxy(moto_url, latency_ms=latency)
            try:
                for cell in (c for c in cells if c.latency == latency):
                    run = bench.measure(cell, proxy)
                    runs.append(run)
                    print(
                        f"  {cell.label}: {run['chunks']} chunks, {run['fused']} fused, "
                        f"wall {run['wall_s']:.1f}s (run {run['run_s']:.1f}s), {run['requests_total']} requests, "
                        f"cpu {run['cpu_s']:.1f}s, moto {run['moto_cpu_s']:.1f}s "
                        f"(seeded in {run['seeded_s']:.0f}s)",
                        flush=True,
                    )
            finally:
                proxy.stop()
    first = args.latencies[0]
    report: list[str] = [
        f"\n{args.videos} videos, strategy {args.strategy}, run_date {RUN_DATE}, {machine()}"
    ]
    figures: dict[str, object] = {"imports_cpu_s": imports}
    text, figures["requests"] = part_requests(runs, first)
    if text:
        report += [f"\n== 1. requests per fused item (workers 1, +{first:g} ms) ==", text]
    text, figures["cpu"] = part_cpu(runs, first, imports["cli"])
    if text:
        report += [f"\n== 2. CPU per fused item (+{first:g} ms) ==", text]
    text, figures["scaling"] = part_scaling(runs, "cli", args.latencies, args.workers, cores, imports["cli"])
    if text:
        report += ["\n== 3. scaling: CLI --workers ==", text]
    text, figures["dagster"] = part_scaling(
        runs, "dagster", args.latencies, args.max_concurrent, cores, imports.get("dagster", 0.0)
    )
    if text:
        report += ["\n== 4. Dagster multiprocess executor ==", text]
        if "dagster" in imports:
            report.append(f"a step process starts at {imports['dagster']:.2f} s CPU (imports alone)")
        report.append(part_dagster_vs_cli(runs, args.latencies, args.max_concurrent))
    print("\n".join(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "machine": machine(),
                "args": {
                    k: v if isinstance(v, int | float | list) else str(v) for k, v in vars(args).items()
                },
                "chunk_size": bench.chunk_size,
                "work": bench.work,
                "expected_fused": bench.expected_fused,
                "figures": figures,
                "runs": runs,
                "bench_seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
            default=str,
        )
    )
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_dagster":
        dagster_child(**json.loads(sys.argv[2]))
    else:
        sys.exit(main())
