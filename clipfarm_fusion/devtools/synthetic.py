"""A synthetic day on S3 that covers every gating case: used by `demo`, the tests and the benchmark.

Each video is given one case; the generator writes its embeddings, its metadata row(s) and its text
stage row accordingly, and returns the expected status per video so callers can check a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd
from numpy.lib import format as npy_format

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.core.policy import (
    FAIL,
    INVALID_VIDEO_ID,
    MISSING_REQUIRED,
    MISSING_TEXT_PENDING,
    SUCCESS_FULL,
    SUCCESS_PLACEHOLDER,
)

# case -> expected status after one run
CASES: dict[str, str] = {
    "full": SUCCESS_FULL,
    "placeholder": SUCCESS_PLACEHOLDER,
    "pending_no_row": MISSING_TEXT_PENDING,
    "pending_status": MISSING_TEXT_PENDING,
    "pending_hash": MISSING_TEXT_PENDING,
    "missing_video": MISSING_REQUIRED,
    "missing_audio": MISSING_REQUIRED,
    "corrupt_nan": FAIL,
    "corrupt_2d": FAIL,
    "corrupt_truncated": FAIL,
    "corrupt_object": FAIL,
    "odd_dim": FAIL,
    "unsafe_id": INVALID_VIDEO_ID,
}
DEFAULT_MIX: dict[str, float] = {
    "full": 0.70,
    "placeholder": 0.10,
    "pending_no_row": 0.03,
    "pending_status": 0.02,
    "pending_hash": 0.02,
    "missing_video": 0.03,
    "missing_audio": 0.03,
    "corrupt_nan": 0.015,
    "corrupt_2d": 0.015,
    "corrupt_truncated": 0.015,
    "corrupt_object": 0.01,
    "odd_dim": 0.01,
    "unsafe_id": 0.005,
}


@dataclass
class SyntheticDay:
    run_date: date
    cases: dict[str, str]  # video_id -> case
    metadata_csv: bytes
    text_state_sqlite: bytes

    def expected_status(self) -> dict[str, str]:
        return {vid: CASES[case] for vid, case in self.cases.items()}


def npy_bytes(array: np.ndarray) -> bytes:
    """A numeric array as `.npy` bytes (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def object_array_npy(marker: str = "/nonexistent/clipfarm-pwned") -> bytes:
    """Hostile `.npy` bytes: a header declaring an object array, then a pickle stream that would run
    `touch <marker>` (GLOBAL os.system, REDUCE) if anything ever unpickled it. Written as literal
    bytes: nothing here calls pickle. The decoder must refuse the file from its header alone."""
    command = f"touch {marker}".encode()
    payload = (
        b"\x80\x02cos\nsystem\nq\x00X"
        + len(command).to_bytes(4, "little")
        + command
        + b"q\x01\x85q\x02Rq\x03."
    )
    header = io.BytesIO()  # the header as numpy writes it, magic string included
    npy_format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    return header.getvalue() + payload


def url_for(video_id: str) -> str:
    return f"https://www.youtube.com/shorts/{video_id}"


def assign_cases(videos: int, mix: dict[str, float]) -> list[str]:
    """Deterministic case per position; every case in the mix appears at least once when videos allow."""
    names = list(mix)
    counts = {n: max(1, int(round(mix[n] * videos))) for n in names}
    counts[names[0]] = max(1, videos - sum(counts[n] for n in names[1:]))
    order = [n for n in names for _ in range(counts[n])][:videos]
    return order


def make_day(
    videos: int = 500,
    run_date: date = date(2026, 3, 1),
    dim: int = 768,
    seed: int = 0,
    mix: dict[str, float] | None = None,
    prefix: str = "vid",
) -> tuple[SyntheticDay, dict[str, bytes]]:
    """(day, objects): objects maps key suffix `embeddings/<m>/<id>.npy` to bytes."""
    rng = np.random.default_rng(seed)
    cases = assign_cases(videos, mix or DEFAULT_MIX)
    day_start = datetime.combine(run_date, time(0), tzinfo=UTC)
    objects: dict[str, bytes] = {}
    meta_rows, text_rows = [], []
    by_id: dict[str, str] = {}
    for n, case in enumerate(cases):
        video_id = f"{prefix}{n:06d}" if case != "unsafe_id" else f"../evil{n}"
        by_id[video_id] = case
        captured = (day_start + timedelta(seconds=17 * n % 86000)).isoformat()
        url = url_for(video_id)
        meta_rows.append(
            {
                "video_id": video_id,
                "url": url,
                "captured_at": captured,
                "title": f'clip {n} 🎬, "quoted"\nsecond line',
                "views": n,
            }
        )
        if n % 10 == 0:  # an older duplicate row that dedupe must drop
            older = (day_start - timedelta(days=3)).isoformat()
            meta_rows.append(
                {"video_id": video_id, "url": url + "?old", "captured_at": older, "title": "old", "views": 0}
            )
        if case == "unsafe_id":
            continue
        source_hash = hashlib.sha256(url.encode()).hexdigest()
        vectors = {m: rng.standard_normal(dim).astype(np.float32) for m in ("video", "audio", "text")}
        keep = {"video", "audio", "text"}
        if case == "placeholder" or case.startswith("pending"):
            keep.discard("text")
        if case == "missing_video":
            keep.discard("video")
        if case == "missing_audio":
            keep.discard("audio")
        for modality in keep:
            objects[f"embeddings/{modality}/{video_id}.npy"] = npy_bytes(vectors[modality])
        if case == "corrupt_nan":
            bad = vectors["video"].copy()
            bad[3] = np.nan
            objects[f"embeddings/video/{video_id}.npy"] = npy_bytes(bad)
        elif case == "corrupt_2d":
            objects[f"embeddings/audio/{video_id}.npy"] = npy_bytes(np.ones((2, dim), np.float32))
        elif case == "corrupt_truncated":
            objects[f"embeddings/video/{video_id}.npy"] = npy_bytes(vectors["video"])[:-100]
        elif case == "corrupt_object":
            objects[f"embeddings/text/{video_id}.npy"] = object_array_npy()
        elif case == "odd_dim":
            objects[f"embeddings/audio/{video_id}.npy"] = npy_bytes(
                rng.standard_normal(dim // 2).astype(np.float32)
            )
        status, text_hash = {
            "placeholder": ("no_captions", source_hash),
            "pending_status": ("queued", source_hash),
            "pending_hash": ("no_captions", "0" * 64),
            "pending_no_row": (None, None),
        }.get(case, ("success", source_hash))
        if status is not None:
            text_rows.append((video_id, text_hash, captured, status, None))
    csv = pd.DataFrame(meta_rows).to_csv(index=False).encode("utf-8")
    day = SyntheticDay(
        run_date=run_date, cases=by_id, metadata_csv=csv, text_state_sqlite=text_state_db(text_rows)
    )
    return day, objects


def text_state_db(rows: list[tuple]) -> bytes:
    """Bytes of a text-stage SQLite snapshot with `processed_items` rows (video_id, source_hash, processed_at, status, error)."""
    connection = sqlite3.connect(":memory:")
    connection.execute(
        "CREATE TABLE processed_items (video_id TEXT PRIMARY KEY, source_hash TEXT, processed_at TEXT, status TEXT, error TEXT)"
    )
    connection.executemany("INSERT INTO processed_items VALUES (?, ?, ?, ?, ?)", rows)
    connection.commit()
    body = connection.serialize()
    connection.close()
    return bytes(body)


def seed(
    client, bucket: str, root: str, day: SyntheticDay, objects: dict[str, bytes], threads: int = 32
) -> None:
    """Create the bucket if needed and upload the day's embeddings, metadata and text state."""
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    layout = Layout(root)
    uploads = {f"{root}/{suffix}": body for suffix, body in objects.items()}
    uploads[layout.metadata_key()] = day.metadata_csv
    uploads[layout.text_state_key()] = day.text_state_sqlite
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(
            pool.map(
                lambda item: client.put_object(Bucket=bucket, Key=item[0], Body=item[1]), uploads.items()
            )
        )
