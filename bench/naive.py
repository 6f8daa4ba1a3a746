"""The naive baseline: the original sequential script, kept as the reference for speed AND for results.

Per video, in order: HEAD each of its three objects, `download_file` the ones that exist to a temp
file (boto3 does its own HEAD before the GET), `np.load` them, look its text-stage row up with one
SQL query, judge it with the gating table ("The gating policy" in docs/contract.md) as written, fuse
one row with plain numpy (the fusion rules, "Strategies and options" in docs/contract.md), and commit
one SQLite row per item (plus its vector). It shares nothing with the pipeline but the horizon parser
(`clipfarm_fusion.core.metadata.scan`, which reads the file through `clipfarm_fusion.core.horizon_file`),
the status names (`clipfarm_fusion.core.policy`), the default terminal text statuses
(`clipfarm_fusion.config`) and the synthetic layout's key scheme, so when its statuses and vectors
equal the pipeline's, both agree with the contract and not merely with each other.

Outputs go to a local directory: `naive_<strategy>.sqlite` with tables `processed_items` (the
state schema) and `vectors(video_id, vector BLOB float32)`; the state file is then uploaded under
`<root>/naive/`, as the script did.

CLI (after `pip install -e '.[dev]'` in the repo root):
`python bench/naive.py --endpoint URL --bucket B [--root clipfarm] [--run-date 2026-03-01] --out DIR
[--strategies concat]`.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import boto3
import botocore.exceptions
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import peak_rss_mb, use_endpoint  # noqa: E402

from clipfarm_fusion.config import DEFAULT_TEXT_TERMINAL_STATUSES  # noqa: E402
from clipfarm_fusion.core import metadata, policy  # noqa: E402

MODALITIES = ("video", "audio", "text")
MAX_FAIL_RETRIES = 3
FIRST_RETRY = 1  # the baseline always starts from an empty state DB


def exists(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def load_vector(path: str, modality: str) -> np.ndarray:
    """np.load without pickle, then the checks the contract asks for; ValueError names the cause."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - every unreadable file is one item failure
        raise ValueError(f"{modality} embedding: unreadable ({exc})") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{modality} embedding: non-numeric dtype {array.dtype}")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{modality} embedding: shape {array.shape}, expected a non-empty 1-D vector")
    vector = array.astype(np.float32)
    if not np.isfinite(vector).all():
        raise ValueError(f"{modality} embedding: non-finite values")
    return vector


def unsafe(video_id: str) -> bool:
    return (
        not video_id
        or len(video_id) > 256
        or any(c in video_id for c in "/\\")
        or ".." in video_id
        or any(ord(c) < 32 or ord(c) == 127 for c in video_id)
    )


def gate(has: dict[str, bool], text_row: tuple | None, source_hash: str, text_state: bool) -> str:
    """The gating table ("The gating policy" in docs/contract.md), one item at a time, in the table's
    own order."""
    if not has["video"] or not has["audio"]:
        return policy.MISSING_REQUIRED
    if has["text"]:
        return policy.SUCCESS_FULL
    if not text_state:
        return policy.MISSING_TEXT_UNAVAILABLE
    if text_row is None:
        return policy.MISSING_TEXT_PENDING
    status, text_hash = text_row
    if status not in DEFAULT_TEXT_TERMINAL_STATUSES or (text_hash is not None and text_hash != source_hash):
        return policy.MISSING_TEXT_PENDING
    return policy.SUCCESS_PLACEHOLDER


def fuse_row(strategy: str, v: np.ndarray, a: np.ndarray, t: np.ndarray, mask: float) -> np.ndarray:
    """The fusion rules ("Strategies and options" in docs/contract.md) for one row: concat, or zero-pad
    to the widest and add / max in video, audio, text order."""
    if strategy == "concat":
        return np.concatenate([v, a, t, [mask]]).astype(np.float32)
    width = max(len(v), len(a), len(t))
    padded = [np.pad(x, (0, width - len(x))) for x in (v, a, t)]
    if strategy == "sum_pool":
        pooled = padded[0] + padded[1] + padded[2]
    else:
        pooled = np.maximum(np.maximum(padded[0], padded[1]), padded[2])
    return np.append(pooled, np.float32(mask)).astype(np.float32)


def majority(dims: list[int]) -> int | None:
    counted = Counter(d for d in dims if d > 0)
    return min(counted, key=lambda d: (-counted[d], d)) if counted else None


def open_output(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS processed_items (video_id TEXT PRIMARY KEY, source_hash TEXT, "
        "processed_at TEXT, status TEXT, error TEXT, artifact_key TEXT, vector_id TEXT, retry_count INTEGER)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS vectors (video_id TEXT PRIMARY KEY, vector BLOB)")
    db.commit()
    return db


def run(bucket: str, root: str, run_date: date, strategies: list[str], out: Path) -> dict:
    """Fuse the whole day sequentially; returns counts per status and timing."""
    started, cpu = time.monotonic(), time.process_time()
    client = boto3.client("s3")
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    with tempfile.TemporaryDirectory() as scratch:
        meta_path, text_path = f"{scratch}/horizon.csv", f"{scratch}/text_state.sqlite"
        client.download_file(bucket, f"{root}/metadata/shorts_metadata_horizon.csv", meta_path)
        location = f"s3://{bucket}/{root}/metadata/shorts_metadata_horizon.csv"
        horizon = metadata.scan(Path(meta_path).read_bytes(), location, run_date, False).rows
        text_state = exists(client, bucket, f"{root}/state/text_downloader.sqlite")
        if text_state:
            client.download_file(bucket, f"{root}/state/text_downloader.sqlite", text_path)
            text_db = sqlite3.connect(text_path)
        items = []
        for row in horizon.itertuples(index=False):
            if unsafe(row.video_id):
                counts[policy.INVALID_VIDEO_ID] += 1
                continue
            has, vectors, errors = {}, {}, []
            for modality in MODALITIES:
                key = f"{root}/embeddings/{modality}/{row.video_id}.npy"
                has[modality] = exists(client, bucket, key)
                if has[modality]:
                    local = f"{scratch}/{modality}.npy"
                    client.download_file(bucket, key, local)
                    try:
                        vectors[modality] = load_vector(local, modality)
                    except ValueError as exc:
                        errors.append(str(exc))
            text_row = (
                text_db.execute(
                    "SELECT status, source_hash FROM processed_items WHERE video_id = ?", (row.video_id,)
                ).fetchone()
                if text_state
                else None
            )
            status = gate(has, text_row, row.source_hash, text_state)
            items.append((row, status, vectors, errors))
        fused = [(v, e) for _, s, v, e in items if s in policy.FUSED_STATUSES]
        dims = [majority([len(v[m]) for v, _ in fused if m in v]) for m in MODALITIES]
        dims[2] = dims[2] or 768
        for strategy in strategies:
            counts.update(write_strategy(out / f"naive_{strategy}.sqlite", strategy, items, dims))
            client.upload_file(
                str(out / f"naive_{strategy}.sqlite"), bucket, f"{root}/naive/naive_{strategy}.sqlite"
            )
    return {
        "seconds": time.monotonic() - started,
        "cpu_seconds": time.process_time() - cpu,
        "counts": dict(counts),
        "fused": sum(counts[s] for s in policy.FUSED_STATUSES) // max(1, len(strategies)),
        "peak_rss_mb": peak_rss_mb(),
    }


def write_strategy(path: Path, strategy: str, items: list, dims: list[int]) -> Counter:
    """Fuse row by row and commit each item's state row (and vector) on its own."""
    db = open_output(path)
    counts: Counter = Counter()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for row, status, vectors, errors in items:
        error, vector = None, None
        if status in policy.FUSED_STATUSES:
            wrong = [
                f"{m} embedding: {len(vectors[m])}-d, expected {d}-d"
                for m, d in zip(MODALITIES, dims, strict=True)
                if m in vectors and len(vectors[m]) != d
            ]
            if errors or wrong:
                error = "; ".join(errors or wrong)
                status = policy.FAIL_TERMINAL if FIRST_RETRY > MAX_FAIL_RETRIES else policy.FAIL
            else:
                text = vectors.get("text", np.zeros(dims[2], np.float32))
                mask = 1.0 if "text" in vectors else 0.0
                vector = fuse_row(strategy, vectors["video"], vectors["audio"], text, mask)
        counts[status] += 1
        db.execute(
            "INSERT OR REPLACE INTO processed_items VALUES (?, ?, ?, ?, ?, NULL, NULL, ?)",
            (row.video_id, row.source_hash, now, status, error, int(status.startswith("fail"))),
        )
        if vector is not None:
            db.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?)", (row.video_id, vector.tobytes()))
        db.commit()
    db.close()
    return counts


def read_output(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(status per video_id, fused vector per video_id) from a naive output file."""
    db = sqlite3.connect(path)
    statuses = dict(db.execute("SELECT video_id, status FROM processed_items"))
    vectors = {vid: np.frombuffer(blob, np.float32) for vid, blob in db.execute("SELECT * FROM vectors")}
    db.close()
    return statuses, vectors


def main() -> None:
    parser = argparse.ArgumentParser(
        description="The sequential baseline: HEAD, download, fuse, commit per row."
    )
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--root", default="clipfarm")
    parser.add_argument("--run-date", type=date.fromisoformat, default=date(2026, 3, 1))
    parser.add_argument("--strategies", default="concat", help="comma-separated (default: concat)")
    parser.add_argument("--out", type=Path, required=True, help="local directory for naive_<s>.sqlite")
    args = parser.parse_args()
    use_endpoint(args.endpoint)
    result = run(args.bucket, args.root, args.run_date, args.strategies.split(","), args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
