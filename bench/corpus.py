"""A bucket as it looks after N videos were fused on earlier days, plus one new day: without running
the pipeline N times and without uploading N videos' embeddings.

`python bench/corpus.py --endpoint URL --bucket B --corpus 1000000 [--day 1000] [--strategies concat]`

What goes on S3 under `<root>/` (seed-era formats, as users have them):

- `metadata/shorts_metadata_horizon.csv`: N + D rows `video_id, url, captured_at, title, views`; titles
  carry quotes, commas, a newline and an emoji, so the reader really parses quoted fields. The N old rows
  are captured on the `--days-back` days before the run date, the D new ones on the run date
  (2026-03-01); rows in no particular order.
- `state/text_downloader.sqlite`: `processed_items(video_id PK, source_hash, processed_at, status, error)`,
  a row per video, hash = sha256(url) as `synthetic.py` does; `no_captions` for `--placeholder-share` of
  the videos (old and new), `success` for the rest.
- `state/fusion_<s>.sqlite`: the state DB (the package's DDL) with the N old videos at terminal statuses,
  `success_full`, or `success_text_placeholder` for the no-captions ones; retry_count 0;
  `artifact_key` = shard key, `vector_id` = `key#row`.
- `fused/<s>/fused_manifest.parquet`: a row per old video, columns exactly `manifest.SCHEMA`, zstd, in the
  order daily runs append them (fusion date, then video_id).
- `fused/<s>/schema.json`: `SchemaLock.build(s, (768, 768, 768), FusionOptions())`.
- `embeddings/{video,audio,text}/<id>.npy`: ONLY the D new videos' (768-d float32; no text for the
  no-captions ones). These are the only per-object uploads.

The old videos' shards (`fused/<s>/shards/date=<capture day>/part-XXXX.npz`, `--shard-size` rows each,
video_id order within a day, exactly as a daily run would have written them) and their embeddings are
NOT uploaded: the manifest and state point at them, but a run of the new day never reads them. So the
bucket holds far fewer objects than a real one; a LIST of an embeddings prefix is cheaper here than in
production (the pipeline only LISTs when a batch's key range is dense in delta keys).

Video ids are 11 characters of YouTube's alphabet, drawn at random, so the new day's ids are spread
through the whole id space like real ones (not clustered in one key range). Everything is vectorised
(numpy ids and dates, one hashlib call per URL, `executemany`, pyarrow), streaming to files in
`workdir`; 3M videos take a minute or two and a few GB of RAM. Large files go up with boto3's managed
upload (`upload_file`: multipart above 8 MB, as a boto3-based seed script would have uploaded them).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boto3.s3.transfer import TransferConfig  # noqa: E402

from clipfarm_fusion.core import policy
from clipfarm_fusion.core.kernels import FusionOptions  # noqa: E402
from clipfarm_fusion.core.layout import Layout  # noqa: E402
from clipfarm_fusion.devtools import package_data
from clipfarm_fusion.devtools.synthetic import npy_bytes  # noqa: E402
from clipfarm_fusion.stores import (
    manifest,  # noqa: E402
    s3io,
)
from clipfarm_fusion.stores.schema_lock import SchemaLock  # noqa: E402

RUN_DATE = date(2026, 3, 1)
DIM = 768
ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)
URL_PREFIX = "https://www.youtube.com/shorts/"
CHUNK = 250_000  # rows per CSV / executemany chunk


@dataclass
class Corpus:
    """What was put on S3, with sizes and how long each step took."""

    bucket: str
    root: str
    corpus: int
    day: int
    run_date: str
    strategies: tuple[str, ...]
    placeholder_share: float
    old_placeholders: int = 0
    new_placeholders: int = 0
    new_objects: int = 0
    old_shards: int = 0  # shard keys the manifest and state point at (not uploaded)
    sizes: dict[str, int] = field(default_factory=dict)  # key -> bytes
    seconds: dict[str, float] = field(default_factory=dict)  # step -> s

    def describe(self) -> str:
        mb = {k.rsplit("/", 1)[-1]: f"{v / 1e6:.1f} MB" for k, v in self.sizes.items()}
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (
            f"corpus {self.corpus:,} old + {self.day:,} new videos in s3://{self.bucket}/{self.root}/ "
            f"({self.old_placeholders:,} old placeholders, {self.old_shards:,} old shard keys pointed at, "
            f"{self.new_objects:,} new .npy objects); "
            f"sizes {mb}; {steps}"
        )


def random_ids(count: int, rng: np.random.Generator, length: int = 11) -> np.ndarray:
    """`count` distinct YouTube-like ids (11 chars of [A-Za-z0-9_-]) as a numpy unicode array."""
    codes = ALPHABET[rng.integers(0, 64, size=(count, length))]
    ids = np.ascontiguousarray(codes).view(f"S{length}").ravel().astype(f"U{length}")
    unique = np.unique(ids)
    if unique.size != count:  # 64**11 ids: practically never; then top up and keep the draw's order
        extra = random_ids(count - unique.size + 16, rng, length)
        ids = pd.unique(np.concatenate([ids, extra]))[:count]
    return ids


def iso_utc(seconds: np.ndarray) -> np.ndarray:
    """Epoch seconds -> `YYYY-MM-DDTHH:MM:SS+00:00` (what `datetime.isoformat()` of a UTC instant gives)."""
    text = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s")
    return np.char.add(text, "+00:00")


def _sha256_hex(values: list[str]) -> list[str]:
    sha256 = hashlib.sha256
    return [sha256(v.encode("utf-8")).hexdigest() for v in values]


def _timed(seconds: dict[str, float], step: str, started: float) -> float:
    now = time.monotonic()
    seconds[step] = round(now - started, 2)
    return now


def _write_csv(path: Path, ids: np.ndarray, urls: list[str], captured: np.ndarray, rng) -> None:
    """The horizon CSV in chunks: pandas quotes titles with quotes, commas and newlines."""
    order = rng.permutation(ids.size)  # an export in no particular order
    views = rng.integers(0, 5_000_000, size=ids.size)
    urls_arr = np.asarray(urls, dtype=object)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for start in range(0, ids.size, CHUNK):
            part = order[start : start + CHUNK]
            titles = [f'clip {n} 🎬, "quoted"\nsecond line · {n % 97}' for n in part.tolist()]
            pd.DataFrame(
                {
                    "video_id": ids[part],
                    "url": urls_arr[part],
                    "captured_at": captured[part],
                    "title": titles,
                    "views": views[part],
                }
            ).to_csv(handle, index=False, header=start == 0)


def _write_text_state(path: Path, ids, hashes, captured, no_captions) -> None:
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(
        "CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, source_hash TEXT, processed_at TEXT, "
        "status TEXT, error TEXT)"
    )
    status = np.where(no_captions, "no_captions", "success")
    order = np.argsort(ids, kind="stable")  # insertion in key order: the fastest to build
    hashes = np.asarray(hashes, dtype=object)
    for start in range(0, order.size, CHUNK):
        part = order[start : start + CHUNK]
        columns = [ids[part].tolist(), hashes[part].tolist(), captured[part].tolist(), status[part].tolist()]
        db.executemany("INSERT INTO processed_items VALUES (?, ?, ?, ?, NULL)", zip(*columns, strict=True))
    db.commit()
    db.close()


def _old_layout(
    ids: np.ndarray, day_index: np.ndarray, shard_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For old videos: the order daily runs wrote them (fusion day, then video_id), and per video in that
    order its part number, its row in the shard and the shard's row count. The fusion day is the capture
    day (a run for day D fuses what was captured by the end of D)."""
    order = np.lexsort((ids, day_index))
    days = day_index[order]
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    counts = np.diff(np.r_[starts, days.size])
    rank = np.arange(days.size) - np.repeat(starts, counts)
    part = rank // shard_size
    shard_idx = rank % shard_size
    per_day = np.repeat(counts, counts)
    shard_n = np.minimum(shard_size, per_day - part * shard_size)
    return order, days, part, shard_idx, shard_n


def _artifact_keys(layout: Layout, strategy: str, days: np.ndarray, part: np.ndarray, day0: np.datetime64):
    """Shard keys per row, built once per distinct (day, part) and taken by code."""
    combo = days.astype(np.int64) * 100_000 + part
    unique, codes = np.unique(combo, return_inverse=True)
    names = [
        layout.shard_key(
            strategy, date.fromisoformat(str(day0 + np.timedelta64(int(c // 100_000), "D"))), int(c % 100_000)
        )
        for c in unique.tolist()
    ]
    return np.asarray(names, dtype=object)[codes], len(names)


def _write_state(path: Path, rows: dict[str, object]) -> None:
    """The seed-era state DB: the package's DDL, rows in video_id order."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.executescript(package_data.state_ddl())
    ids = rows["video_id"]
    order = np.argsort(ids, kind="stable")
    names = ("video_id", "source_hash", "processed_at", "status", "artifact_key", "vector_id")
    for start in range(0, order.size, CHUNK):
        part = order[start : start + CHUNK]
        columns = [np.asarray(rows[name])[part].tolist() for name in names]  # python str, not numpy str
        db.executemany(
            "INSERT INTO processed_items (video_id, source_hash, processed_at, status, error, artifact_key, "
            "vector_id, retry_count) VALUES (?, ?, ?, ?, NULL, ?, ?, 0)",
            zip(*columns, strict=True),
        )
    db.commit()
    db.close()


def generate(
    client,
    bucket: str,
    corpus: int,
    day: int = 1000,
    *,
    root: str = "clipfarm",
    strategies: tuple[str, ...] = ("concat",),
    run_date: date = RUN_DATE,
    placeholder_share: float = 0.10,
    days_back: int = 365,
    shard_size: int = 2048,
    workdir: Path | None = None,
    seed: int = 0,
    threads: int = 16,
    log=print,
) -> Corpus:
    """Build and upload the corpus (see the module docstring); `client` talks to the server directly."""
    rng = np.random.default_rng(seed)
    layout = Layout(root)
    info = Corpus(bucket, root, corpus, day, run_date.isoformat(), tuple(strategies), placeholder_share)
    t = started = time.monotonic()
    own_dir = tempfile.TemporaryDirectory(prefix="corpus-") if workdir is None else None
    work = Path(own_dir.name if own_dir else workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        total = corpus + day
        ids = random_ids(total, rng)
        urls = [URL_PREFIX + v for v in ids.tolist()]
        hashes = _sha256_hex(urls)
        run_day = np.datetime64(run_date.isoformat(), "D")
        day_index = np.empty(total, dtype=np.int64)  # days since run_day - days_back
        day_index[:corpus] = rng.integers(0, days_back, size=corpus)
        day_index[corpus:] = days_back
        day0 = run_day - np.timedelta64(days_back, "D")
        epoch = (day0 - np.datetime64("1970-01-01", "D")).astype(np.int64) * 86400
        captured = iso_utc(epoch + day_index * 86400 + rng.integers(0, 86400, size=total))
        no_captions = rng.random(total) < placeholder_share
        info.old_placeholders = int(no_captions[:corpus].sum())
        info.new_placeholders = int(no_captions[corpus:].sum())
        t = _timed(info.seconds, "ids+hashes", t)

        csv_path = work / "shorts_metadata_horizon.csv"
        _write_csv(csv_path, ids, urls, captured, rng)
        t = _timed(info.seconds, "csv", t)
        text_path = work / "text_downloader.sqlite"
        _write_text_state(text_path, ids, hashes, captured, no_captions)
        t = _timed(info.seconds, "text_state", t)

        uploads: dict[str, Path] = {layout.metadata_key(): csv_path, layout.text_state_key(): text_path}
        old = np.arange(corpus)
        order, days, part, shard_idx, shard_n = _old_layout(ids[old], day_index[old], shard_size)
        o_ids, o_placeholder = ids[order], no_captions[order]
        o_hashes = np.asarray(hashes, dtype=object)[order]
        o_captured = captured[order]
        fused_at = iso_utc(epoch + days * 86400 + 86400 + 2 * 3600)  # the next night's run
        statuses = np.where(o_placeholder, policy.SUCCESS_PLACEHOLDER, policy.SUCCESS_FULL)
        for strategy in strategies:
            artifact, shards = _artifact_keys(layout, strategy, days, part, day0)
            vector_id = pc.binary_join_element_wise(
                pa.array(artifact, pa.string()), pc.cast(pa.array(shard_idx), pa.string()), "#"
            ).to_numpy(zero_copy_only=False)
            state_path = work / f"fusion_{strategy}.sqlite"
            _write_state(
                state_path,
                {
                    "video_id": o_ids,
                    "source_hash": o_hashes,
                    "processed_at": fused_at,
                    "status": statuses,
                    "artifact_key": artifact,
                    "vector_id": vector_id,
                },
            )
            t = _timed(info.seconds, f"state_{strategy}", t)
            lock = SchemaLock.build(strategy, (DIM, DIM, DIM), FusionOptions())
            id_arr = pa.array(o_ids, pa.string())
            table = pa.table(
                {
                    "video_id": id_arr,
                    "captured_at": pa.array(o_captured, pa.string()),
                    "source_hash": pa.array(o_hashes, pa.string()),
                    "fusion_strategy": pa.array(np.full(corpus, strategy), pa.string()),
                    "fused_dim": np.full(corpus, lock.fused_dim, np.int32),
                    "fused_key": pa.array(artifact, pa.string()),
                    "shard_idx": shard_idx.astype(np.int32),
                    "shard_n": shard_n.astype(np.int32),
                    **{
                        f"{m}_emb_key": pc.binary_join_element_wise(
                            layout.embedding_prefix(m), id_arr, ".npy", ""
                        )
                        for m in ("video", "audio", "text")
                    },
                    "text_present": (~o_placeholder).astype(np.int8),
                    "text_source": pa.array(np.where(o_placeholder, "placeholder", "full"), pa.string()),
                    "text_state_status": pa.array(
                        np.where(o_placeholder, "no_captions", "success"), pa.string()
                    ),
                    "text_missing_reason": pa.array(
                        np.where(o_placeholder, "terminal_text_status:no_captions", ""), pa.string()
                    ),
                    "fusion_status": pa.array(statuses, pa.string()),
                    "retry_count_at_write": np.zeros(corpus, np.int32),
                },
                # the seed-era file's columns: no fused_at (the import leaves it null: older than any commit)
                schema=pa.schema([f for f in manifest.SCHEMA if f.name != "fused_at"]),
            )
            manifest_path = work / f"fused_manifest_{strategy}.parquet"
            pq.write_table(table, manifest_path, compression="zstd")
            del table
            t = _timed(info.seconds, f"manifest_{strategy}", t)
            schema_path = work / f"schema_{strategy}.json"
            schema_path.write_bytes(lock.to_json())
            uploads[layout.state_mirror_key(strategy)] = state_path
            uploads[layout.manifest_key(strategy)] = manifest_path
            uploads[layout.schema_key(strategy)] = schema_path
            info.old_shards = shards

        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        transfer = TransferConfig(max_concurrency=4)
        for key, path in uploads.items():
            client.upload_file(str(path), bucket, key, Config=transfer)
            info.sizes[key] = path.stat().st_size
        t = _timed(info.seconds, "upload_stores", t)

        new = np.arange(corpus, total)
        vectors = rng.standard_normal((day, 3, DIM), dtype=np.float32)
        objects: list[tuple[str, int, int]] = []
        for n, i in enumerate(new.tolist()):
            for m, modality in enumerate(("video", "audio", "text")):
                if modality == "text" and no_captions[i]:
                    continue
                objects.append((layout.embedding_key(modality, str(ids[i])), n, m))

        def put(item: tuple[str, int, int]) -> None:
            key, n, m = item
            client.put_object(Bucket=bucket, Key=key, Body=npy_bytes(vectors[n, m]))

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(put, objects))
        info.new_objects = len(objects)
        _timed(info.seconds, "upload_new_day", t)
        info.seconds["total"] = round(time.monotonic() - started, 2)
    finally:
        if own_dir is not None:
            own_dir.cleanup()
    log(info.describe())
    return info


def parse_count(text: str) -> int:
    """`100000`, `100_000`, `100k`, `1M`, `1.5m` -> int."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="S3 endpoint URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--root", default="clipfarm")
    parser.add_argument("--corpus", type=parse_count, default=100_000, help="old videos (100k, 1M, ...)")
    parser.add_argument("--day", type=parse_count, default=1000, help="new videos on the run date")
    parser.add_argument("--strategies", default="concat", help="comma-separated (default: concat)")
    parser.add_argument("--placeholder-share", type=float, default=0.10, help="share with no_captions")
    parser.add_argument("--days-back", type=int, default=365)
    parser.add_argument(
        "--shard-size", type=int, default=2048, help="rows per old shard, as the runs wrote them"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write what was generated here")
    args = parser.parse_args()
    from common import use_endpoint

    use_endpoint(args.endpoint)
    info = generate(
        s3io.make_client(16),
        args.bucket,
        args.corpus,
        args.day,
        root=args.root,
        strategies=tuple(s for s in args.strategies.split(",") if s),
        placeholder_share=args.placeholder_share,
        days_back=args.days_back,
        shard_size=args.shard_size,
        seed=args.seed,
    )
    if args.json:
        args.json.write_text(json.dumps(info.__dict__, default=str))


if __name__ == "__main__":
    main()
