"""The days `demo` and `dev` seed: consecutive days ending yesterday (UTC), made as upstream makes them.

The first day covers every gating case. Each later day brings new videos, what upstream owed the day
before (`synthetic.later_deliveries`: late text, text for half the placeholders, the missing video or
audio, re-exports of the broken files) and a few failures of its own. Every day stays under the fail
rate check's 5% except the newest one when there are two days or more: its export had a batch of
broken files, so it shows `fail_rate_below_threshold` failing. No later day repairs that batch, so the
newest day fails the check alike in `demo` (each day is fused as it arrives) and in `dev` (every day is
seeded first and backfilled afterwards, so the older days see the repairs their next day brought).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from clipfarm_fusion.devtools import synthetic

DEFAULT_DAYS = 3
DEFAULT_VIDEOS = 200  # new videos per day
DELIVERED_AT = timedelta(minutes=30)  # after midnight: what upstream owed the day before arrives
# Every gating case, with few failures (2.5% of 200 videos).
FIRST_MIX: dict[str, float] = {
    "full": 0.78,
    "placeholder": 0.10,
    "pending_no_row": 0.02,
    "pending_status": 0.02,
    "pending_hash": 0.02,
    "missing_video": 0.015,
    "missing_audio": 0.015,
    "corrupt_nan": 0.005,
    "corrupt_2d": 0.005,
    "corrupt_truncated": 0.005,
    "corrupt_object": 0.005,
    "odd_dim": 0.005,
    "unsafe_id": 0.005,
}
# A day like most: a few items waiting, a few failures (2%).
ORDINARY_MIX: dict[str, float] = {
    "full": 0.86,
    "placeholder": 0.08,
    "pending_no_row": 0.02,
    "pending_status": 0.01,
    "missing_video": 0.01,
    "missing_audio": 0.01,
    "corrupt_nan": 0.01,
    "corrupt_truncated": 0.01,
}
# The newest day: a batch of broken files (10% of the new videos), over the 5% threshold.
BAD_MIX: dict[str, float] = {
    "full": 0.70,
    "placeholder": 0.08,
    "pending_no_row": 0.02,
    "pending_status": 0.01,
    "missing_video": 0.01,
    "missing_audio": 0.01,
    "corrupt_nan": 0.025,
    "corrupt_2d": 0.02,
    "corrupt_truncated": 0.025,
    "corrupt_object": 0.01,
    "odd_dim": 0.02,
    "unsafe_id": 0.005,
}


def demo_dates(days: int, today: date | None = None) -> list[date]:
    """`days` consecutive dates, oldest first, ending yesterday (UTC): the newest daily partition, so
    the days sit at the end of Dagster's partition plots."""
    yesterday = (today or datetime.now(UTC).date()) - timedelta(days=1)
    return [yesterday - timedelta(days=back) for back in range(days - 1, -1, -1)]


def mix_of(index: int, days: int) -> dict[str, float]:
    """The first day covers every case; the newest of two or more is the bad one; the rest are ordinary."""
    if index == 0:
        return FIRST_MIX
    return BAD_MIX if index == days - 1 else ORDINARY_MIX


def demo_days(
    days: int = DEFAULT_DAYS, videos: int = DEFAULT_VIDEOS, today: date | None = None
) -> list[tuple[synthetic.SyntheticDay, dict[str, bytes]]]:
    """(day, objects) per demo day, oldest first, for `synthetic.add_day` to add in order. A day's
    video ids start with its date (`v20260301-000000`), so a list of ids says which day brought each."""
    made: list[tuple[synthetic.SyntheticDay, dict[str, bytes]]] = []
    for index, run_date in enumerate(demo_dates(days, today)):
        day, objects = synthetic.make_day(
            videos,
            run_date=run_date,
            seed=index,
            mix=mix_of(index, days),
            prefix=f"v{run_date:%Y%m%d}-",
            older_captures=index == 0,
        )
        if made:
            at = datetime.combine(run_date, time(0), tzinfo=UTC) + DELIVERED_AT
            owed, text_rows = synthetic.later_deliveries(made[-1][0], at, seed=days + index)
            objects = owed | objects
            day.text_state_sqlite = synthetic.merged_text_state(day.text_state_sqlite, text_rows)
        made.append((day, objects))
    return made
