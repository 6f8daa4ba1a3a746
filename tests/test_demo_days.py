"""The demo's days (`devtools.demo_days`) and the helper that adds a day to a bucket without losing the
earlier ones (`synthetic.add_day`), on a moto server."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from clipfarm_fusion.core import policy
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import demo_days, synthetic
from clipfarm_fusion.read.checks import FAIL_RATE_THRESHOLD
from clipfarm_fusion.stores import s3io

LAYOUT = Layout("clipfarm")
TODAY = date(2026, 3, 4)


def text_rows(body: bytes) -> dict[str, tuple]:
    connection = sqlite3.connect(":memory:")
    connection.deserialize(body)
    return {row[0]: row[1:] for row in connection.execute("SELECT * FROM processed_items")}


def horizon(client, bucket: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(s3io.get_object(client, bucket, LAYOUT.metadata_key()).body))


def test_add_day_appends_the_horizon_and_merges_the_text_db_keeping_the_earlier_day(client, bucket):
    first, first_objects = synthetic.make_day(
        30, run_date=date(2026, 3, 1), mix={"full": 0.5, "pending_status": 0.5}
    )
    synthetic.add_day(client, bucket, "clipfarm", first, first_objects, threads=8)
    at = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
    owed, owed_text = synthetic.later_deliveries(first, at)
    second, second_objects = synthetic.make_day(
        12, run_date=date(2026, 3, 2), prefix="b", older_captures=False, mix={"full": 1.0}
    )
    second.text_state_sqlite = synthetic.merged_text_state(second.text_state_sqlite, owed_text)
    synthetic.add_day(client, bucket, "clipfarm", second, owed | second_objects, threads=8)

    rows = horizon(client, bucket)
    expected = pd.concat(
        [pd.read_csv(io.BytesIO(day.metadata_csv)) for day in (first, second)], ignore_index=True
    )
    pd.testing.assert_frame_equal(rows, expected)  # the first day's rows first, unchanged, then the second's
    stored = text_rows(s3io.get_object(client, bucket, LAYOUT.text_state_key()).body)
    before, added = text_rows(first.text_state_sqlite), text_rows(second.text_state_sqlite)
    assert set(stored) == set(before) | set(added) and len(stored) > len(before)
    waited = [v for v, case in first.cases.items() if case == "pending_status"]
    assert waited and all(stored[v][2] == "success" and stored[v][1] == at.isoformat() for v in waited)
    assert all(stored[v] == before[v] for v in set(before) - set(waited))  # the rest of day one stays
    for key, body in (first_objects | owed | second_objects).items():  # every file, the newest copy
        assert s3io.get_object(client, bucket, f"clipfarm/{key}").body == body, key


@pytest.mark.fast
def test_later_deliveries_bring_what_a_day_left_waiting_or_broken():
    day, _ = synthetic.make_day(200, mix=demo_days.FIRST_MIX)
    at = datetime(2026, 3, 2, tzinfo=UTC)
    owed, text = synthetic.later_deliveries(day, at)
    rows = text_rows(text)
    placeholders = [v for v, case in day.cases.items() if case == "placeholder"]
    assert sum(v in rows for v in placeholders) == len(placeholders) // 2  # half of them get text at last
    for video_id, case in day.cases.items():
        modality = synthetic.LATER.get(case)
        key = f"embeddings/{modality}/{video_id}.npy"
        if modality is None or (case == "placeholder" and video_id not in rows):
            assert not any(k.endswith(f"/{video_id}.npy") for k in owed), video_id
            continue
        vector = np.load(io.BytesIO(owed[key]), allow_pickle=False)
        assert vector.shape == (768,) and vector.dtype == np.float32 and np.isfinite(vector).all(), key
        if modality == "text":  # the text stage says so, for this very source_hash, at `at`
            source_hash = hashlib.sha256(synthetic.url_for(video_id).encode()).hexdigest()
            assert rows[video_id] == (source_hash, at.isoformat(), "success", None), video_id
    assert {key.rsplit("/", 1)[1].removesuffix(".npy") for key in owed} <= set(day.cases)


@pytest.mark.fast
def test_the_demo_days_end_yesterday_and_only_the_newest_is_over_the_fail_rate_threshold():
    made = demo_days.demo_days(today=TODAY)
    dates = [day.run_date for day, _ in made]
    assert dates == [TODAY - timedelta(days=n) for n in (3, 2, 1)]
    assert set(made[0][0].cases.values()) == set(synthetic.CASES)  # the first day: every gating case
    all_ids = [video_id for day, _ in made for video_id in day.cases]
    assert len(all_ids) == len(set(all_ids)) == 3 * demo_days.DEFAULT_VIDEOS
    unsafe = sum(case == "unsafe_id" for day, _ in made for case in day.cases.values())
    for index, (day, _) in enumerate(made):
        failing = Counter(day.expected_status().values())[policy.FAIL]
        # Every failure is re-exported the next day, so a day's failures are its own new videos'; its
        # delta is at least its new videos, at most those plus what the day before did not fuse in full.
        if index < len(made) - 1:
            assert 0 < failing / demo_days.DEFAULT_VIDEOS < FAIL_RATE_THRESHOLD, day.run_date
        else:
            before = made[index - 1][0].expected_status().values()
            most = demo_days.DEFAULT_VIDEOS + sum(s != policy.SUCCESS_FULL for s in before) + unsafe
            assert failing / most > FAIL_RATE_THRESHOLD, day.run_date
    assert [day.run_date for day, _ in demo_days.demo_days(1, 10, TODAY)] == [TODAY - timedelta(days=1)]
