"""Plan and commit of a corpus-sized day: what adding a strategy to a corpus of N videos costs the two
stages that see the whole day at once.

`python bench/plan_commit.py [--corpus 1M,10M] [--strategy sum_pool] [--json PATH]`

For each N: a fresh moto server process; `bench/corpus.py` puts a horizon of N videos and the text
stage's DB of N rows on it (no strategy has state yet, so the day's delta is the whole corpus). Then,
each in a fresh process so that its peak RSS is its own:

1. **plan**: the real `clipfarm_fusion.run.plan.plan`: the horizon scan, the work list, the text-stage
   lookup, the staged chunk inputs.
2. **fuse (synthesized)**: for each chunk, the rows a fuse step would stage had every video fused
   (status by the text-stage verdict, one shard key per `shard_size` rows, ETags made up), staged
   exactly where `fuse_chunk` stages them. No embedding is read: this stage is not what is measured.
3. **commit**: the real `clipfarm_fusion.run.commit.commit`: the schema lock, the manifest and the
   state, in slices of `COMMIT_SLICE` videos.

Then a check that the state and the manifest each hold exactly N rows. Each stage prints its wall
time, CPU time and peak RSS; the targets (issue "Lineage and re-fusion") are plan and commit each at
most 10 min and 2 GB at 10M videos on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, machine, moto_process, use_endpoint  # noqa: E402
from corpus import RUN_DATE, parse_count  # noqa: E402

BUCKET = "plan-commit"
STAGES = ("plan", "fuse", "commit", "check")


def _config(strategy: str, state_dir: Path):
    from clipfarm_fusion.config import FusionConfig

    return FusionConfig(bucket=BUCKET, strategies=(strategy,), state_dir=str(state_dir))


def _stage_plan(config, scratch: Path) -> dict:
    from clipfarm_fusion.run import plan
    from clipfarm_fusion.stores import s3io

    planned = plan.plan(config, RUN_DATE, s3io.make_client(config.fetch_threads), logging.getLogger("bench"))
    (scratch / "plan.pickle").write_bytes(pickle.dumps(planned))
    return {"work": planned.work, "chunks": planned.chunks}


def _stage_fuse(config, scratch: Path) -> dict:
    """Every chunk's output as if every video had fused (see the module docstring)."""
    from clipfarm_fusion.run import staging
    from clipfarm_fusion.run.chunk import ChunkResult
    from clipfarm_fusion.stores import s3io

    planned = pickle.loads((scratch / "plan.pickle").read_bytes())
    client = s3io.make_client(config.fetch_threads)
    results = [_synthesized_chunk(client, config, planned, index) for index in range(planned.chunks)]
    staging.remove(client, config.bucket, [])  # nothing: the commit removes the run's objects
    (scratch / "results.pickle").write_bytes(pickle.dumps(results))
    assert all(isinstance(r, ChunkResult) for r in results)
    return {"chunks": len(results), "rows": sum(r.looked_at for r in results)}


def _synthesized_chunk(client, config, planned, index: int):
    import numpy as np

    from clipfarm_fusion.core import policy
    from clipfarm_fusion.core.kernels import FusionOptions
    from clipfarm_fusion.core.layout import Layout
    from clipfarm_fusion.run import staging
    from clipfarm_fusion.run.chunk import ChunkResult
    from clipfarm_fusion.run.summary import StrategySummary
    from clipfarm_fusion.stores import manifest, state, state_schema
    from clipfarm_fusion.stores.schema_lock import SchemaLock

    layout = Layout(config.root)
    tables, _ = staging.get(
        client, config.bucket, layout.chunk_input_key(planned.run_id, index), config.s3_patience_seconds
    )
    work = tables["work"].to_pandas()
    (strategy,) = planned.strategies
    name, dims, options = strategy.name, (768, 768, 768), FusionOptions()
    present = (work["text_status"] != "no_captions").to_numpy()
    statuses = np.where(present, policy.SUCCESS_FULL, policy.SUCCESS_PLACEHOLDER)
    lock_id = SchemaLock.build(name, dims, options).lock_id
    now = datetime.now(UTC).isoformat()
    manifest_parts, keys, artifact = [], [], np.empty(len(work), dtype=object)
    for start in range(0, len(work), config.shard_size):
        rows = work.iloc[start : start + config.shard_size].reset_index(drop=True)
        key = layout.shard_key(name, RUN_DATE, strategy.first_part + index * 10_000 + len(keys))
        keys.append(key)
        artifact[start : start + len(rows)] = key
        etags = {
            m: np.asarray([f'"{v}{m}"' for v in rows["video_id"]], dtype=object)
            for m in ("video", "audio", "text")
        }
        lineage = manifest.Lineage(etags, {m: np.full(len(rows), None, dtype=object) for m in etags}, lock_id)
        manifest_parts.append(
            manifest.shard_rows(
                name,
                layout,
                rows,
                present[start : start + len(rows)],
                work["text_status"].to_numpy(dtype=object)[start : start + len(rows)],
                sum(dims),
                key,
                np.zeros(len(rows), dtype=np.int64),
                options,
                lineage,
            )
        )
    import pyarrow as pa

    captured_ns, hashes = state.row_cursors(work)
    position = np.arange(len(work)) % config.shard_size
    state_rows = pa.table(
        {
            "video_id": work["video_id"].to_numpy(dtype=object),
            "source_hash": work["source_hash"].to_numpy(dtype=object),
            "processed_at": [now] * len(work),
            "status": statuses,
            "error": pa.nulls(len(work), pa.string()),
            "artifact_key": artifact,
            "vector_id": [f"{a}#{p}" for a, p in zip(artifact, position, strict=True)],
            "retry_count": np.zeros(len(work), dtype=np.int64),
            "captured_ns": np.asarray(captured_ns, dtype=np.int64),
            "hash64": np.asarray(hashes, dtype=np.int64),
            "run_id": pa.nulls(len(work), pa.string()),
        },
        schema=state_schema.SCHEMA,
    )
    summary = StrategySummary()
    summary.counts = {str(s): int(c) for s, c in zip(*np.unique(statuses, return_counts=True), strict=True)}
    summary.shards_written = keys
    meta = {
        name: {
            "summary": asdict(summary),
            "dims": list(dims),
            "fresh": {},
            "looked_at": len(work),
            "text_checked": [],
            "text_late": [],
        }
    }
    key = layout.chunk_output_key(planned.run_id, index)
    staging.put(
        client,
        config.bucket,
        key,
        {f"state/{name}": state_rows, f"manifest/{name}": pa.concat_tables(manifest_parts)},
        meta,
        config.s3_patience_seconds,
    )
    return ChunkResult(index=index, key=key, looked_at=len(work), reads=0)


def _stage_commit(config, scratch: Path) -> dict:
    from clipfarm_fusion.run import commit
    from clipfarm_fusion.stores import s3io

    planned = pickle.loads((scratch / "plan.pickle").read_bytes())
    results = pickle.loads((scratch / "results.pickle").read_bytes())
    summary = commit.commit(config, planned, results, s3io.make_client(config.fetch_threads))
    strategy = summary.strategies[planned.names[0]]
    return {
        "manifest_added": strategy.manifest_added,
        "conflicts": summary.conflicts,
        "stopped": summary.stopped,
    }


def _stage_check(config, scratch: Path) -> dict:
    """Rows in each table, by batches of one column (the readers would hold all N rows at once)."""
    from clipfarm_fusion.core.layout import Layout
    from clipfarm_fusion.stores import lake, s3io

    name, layout = config.strategies[0], Layout(config.root)
    options = lake.storage_options(s3io.make_client(4))
    counts = {}
    for label, key in (
        ("state_rows", layout.state_table_key(name)),
        ("manifest_rows", layout.manifest_table_key(name)),
    ):
        table = lake.open_table(lake.uri(config.bucket, key), options)
        counts[label] = sum(b.num_rows for b in lake.batches(table, ["video_id"]))
    return counts


def child(stage: str, strategy: str, scratch: Path, slice_size: int | None) -> None:
    """One stage in this process; prints one JSON line: its result, wall s, CPU s, peak RSS MB."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    config = _config(strategy, scratch / "state")
    if slice_size:
        from clipfarm_fusion.run import commit

        commit.COMMIT_SLICE = slice_size
    started, cpu = time.monotonic(), time.process_time()
    result = globals()[f"_stage_{stage}"](config, scratch)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                **result,
                "wall_s": round(time.monotonic() - started, 1),
                "cpu_s": round(time.process_time() - cpu, 1),
                "peak_rss_mb": round(usage.ru_maxrss / 1024),
            }
        )
    )


def one_corpus(n: int, args, scratch: Path) -> dict:
    stages: dict[str, dict] = {}
    with moto_process() as url:
        use_endpoint(url)
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                str(BENCH_DIR / "corpus.py"),
                "--endpoint",
                url,
                "--bucket",
                BUCKET,
                "--corpus",
                str(n),
                "--day",
                "0",
                "--strategies",
                "",
                "--json",
                str(scratch / "corpus.json"),
            ],
            check=True,
        )
        print(f"[{n:,}] corpus generated in {time.monotonic() - started:.0f} s", flush=True)
        for stage in STAGES:
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    stage,
                    "--strategy",
                    args.strategy,
                    "--scratch",
                    str(scratch),
                    *(("--commit-slice", str(args.commit_slice)) if args.commit_slice else ()),
                ],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            stages[stage] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"[{n:,}] {stage}: {stages[stage]}", flush=True)
    check = stages["check"]
    if check["state_rows"] != n or check["manifest_rows"] != n:
        raise SystemExit(f"MISMATCH at {n:,}: {check}")
    return {"corpus": n, "stages": stages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="1M", help="comma-separated corpus sizes (1M, 10M, 250k)")
    parser.add_argument("--strategy", default="sum_pool", help="the strategy added to the corpus")
    parser.add_argument(
        "--commit-slice",
        type=parse_count,
        default=None,
        help="videos per commit slice (default: the package's)",
    )
    parser.add_argument("--json", type=Path, default=None, help="results file (default: bench/results/)")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.strategy, args.scratch, args.commit_slice)
        return 0
    results = []
    for n in (parse_count(c) for c in args.corpus.split(",")):
        with tempfile.TemporaryDirectory(prefix="plan-commit-") as scratch:
            results.append(one_corpus(n, args, Path(scratch)))
    out = args.json or BENCH_DIR / "results" / f"plan-commit-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(
        json.dumps({"machine": machine(), "run_date": str(date.today()), "results": results}, indent=1)
    )
    for r in results:
        row = "  ".join(f"{s} {v['wall_s']}s/{v['peak_rss_mb']}MB" for s, v in r["stages"].items())
        print(f"{r['corpus']:>11,}  {row}")
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
