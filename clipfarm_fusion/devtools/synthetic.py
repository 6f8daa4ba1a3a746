"""A synthetic day on S3 that covers every gating case: used by `demo`, the tests and the benchmark.

Each video is given one case; the generator writes its embeddings, its metadata row(s) and its text
stage row accordingly, and returns the expected status per video so callers can check a run.
`later_deliveries` is what upstream sends afterwards for a day's broken or waiting videos, and
`add_day` puts a day into a bucket that already holds earlier ones, the way upstream grows it.
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
from clipfarm_fusion.stores import s3io

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
    older_captures: bool = True,
) -> tuple[SyntheticDay, dict[str, bytes]]:
    """(day, objects): objects maps key suffix `embeddings/<m>/<id>.npy` to bytes. With
    `older_captures`, every tenth video also has an older horizon row (another URL, captured three
    days before) that the scan must drop; a day added after others leaves them out, since such a row
    would belong to an earlier day's horizon."""
    rng = np.random.default_rng(seed)
    cases = assign_cases(videos, mix or DEFAULT_MIX)
    day_start = datetime.combine(run_date, time(0), tzinfo=UTC)
    objects: dict[str, bytes] = {}
    meta_rows, text_rows = [], []
    by_id: dict[str, str] = {}
    for n, case in enumerate(cases):
        video_id = f"{prefix}{n:06d}" if case != "unsafe_id" else f"../evil-{prefix}{n:06d}"
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
        if older_captures and n % 10 == 0:  # an older duplicate row that dedupe must drop
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


# case -> the modality upstream delivers afterwards: text that was owed (a text-stage row comes with
# it), the missing video or audio, or a re-export of the file that was broken.
LATER: dict[str, str] = {
    "placeholder": "text",
    "pending_no_row": "text",
    "pending_status": "text",
    "pending_hash": "text",
    "missing_video": "video",
    "missing_audio": "audio",
    "corrupt_nan": "video",
    "corrupt_2d": "audio",
    "corrupt_truncated": "video",
    "corrupt_object": "text",
    "odd_dim": "audio",
}


def later_deliveries(
    earlier: SyntheticDay, at: datetime, dim: int = 768, seed: int = 0, placeholders_every: int = 2
) -> tuple[dict[str, bytes], bytes]:
    """(objects, text DB) that upstream sends at `at` for `earlier`'s videos it left waiting or broken:
    the text owed (and, for every `placeholders_every`-th placeholder, the text that finally came),
    the missing video or audio, and good files in place of the broken ones. The text-stage rows say
    `success` for the video's source_hash at `at`, so a run after `at` hears the news."""
    rng = np.random.default_rng(seed)
    objects: dict[str, bytes] = {}
    text_rows = []
    placeholders = [video_id for video_id, case in earlier.cases.items() if case == "placeholder"]
    stay = set(placeholders) - set(placeholders[::placeholders_every])  # no text ever comes for these
    for video_id, case in earlier.cases.items():
        modality = LATER.get(case)
        if modality is None or video_id in stay:
            continue
        objects[f"embeddings/{modality}/{video_id}.npy"] = npy_bytes(
            rng.standard_normal(dim).astype(np.float32)
        )
        if modality == "text":
            source_hash = hashlib.sha256(url_for(video_id).encode()).hexdigest()
            text_rows.append((video_id, source_hash, at.isoformat(), "success", None))
    return objects, text_state_db(text_rows)


def merged_text_state(base: bytes, update: bytes) -> bytes:
    """The text-stage DB `base` with every row of `update` added, a later row replacing the earlier
    one of the same video: how the text stage's DB grows from one day to the next."""
    connection = sqlite3.connect(":memory:")
    connection.deserialize(base)
    newer = sqlite3.connect(":memory:")
    newer.deserialize(update)
    connection.executemany(
        "INSERT OR REPLACE INTO processed_items VALUES (?, ?, ?, ?, ?)",
        newer.execute("SELECT video_id, source_hash, processed_at, status, error FROM processed_items"),
    )
    connection.commit()
    body = bytes(connection.serialize())
    connection.close()
    newer.close()
    return body


def seed(
    client, bucket: str, root: str, day: SyntheticDay, objects: dict[str, bytes], threads: int = 32
) -> None:
    """Create the bucket if needed and upload the day's embeddings, metadata and text state, replacing
    any horizon and text DB already there (`add_day` keeps them)."""
    layout = Layout(root)
    _create_bucket(client, bucket)
    files = {layout.metadata_key(): day.metadata_csv, layout.text_state_key(): day.text_state_sqlite}
    _upload(client, bucket, root, objects, files, threads)


def add_day(
    client, bucket: str, root: str, day: SyntheticDay, objects: dict[str, bytes], threads: int = 32
) -> None:
    """Add a day to a bucket that may hold earlier ones, as upstream does: the day's embeddings are
    uploaded (replacing a file it re-exports), its horizon rows are appended to the horizon and its
    text-stage rows merged into the text DB (`merged_text_state`), so every earlier day stays. On an
    empty bucket it is `seed`."""
    layout = Layout(root)
    _create_bucket(client, bucket)
    horizon = s3io.get_object(client, bucket, layout.metadata_key()).body
    text_state = s3io.get_object(client, bucket, layout.text_state_key()).body
    files = {
        layout.metadata_key(): day.metadata_csv if horizon is None else _appended(horizon, day.metadata_csv),
        layout.text_state_key(): day.text_state_sqlite
        if text_state is None
        else merged_text_state(text_state, day.text_state_sqlite),
    }
    _upload(client, bucket, root, objects, files, threads)


def _appended(horizon: bytes, day_csv: bytes) -> bytes:
    """The horizon CSV with the day's rows after its own; both must have the same header."""
    header, _, rows = day_csv.partition(b"\n")
    if horizon.partition(b"\n")[0] != header:
        raise ValueError(f"the horizon's header is not the day's {header!r}: cannot append the day")
    return horizon.rstrip(b"\n") + b"\n" + rows


def _create_bucket(client, bucket: str) -> None:
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)


def _upload(
    client, bucket: str, root: str, objects: dict[str, bytes], files: dict[str, bytes], threads: int
) -> None:
    """Put the embeddings (`objects`, keyed under `root`) and the `files` (full keys) side by side."""
    uploads = {f"{root}/{suffix}": body for suffix, body in objects.items()} | files
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(
            pool.map(
                lambda item: client.put_object(Bucket=bucket, Key=item[0], Body=item[1]), uploads.items()
            )
        )
