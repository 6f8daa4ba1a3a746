"""DESIGN §3 delta rules on the pure `delta.compute`."""

import pandas as pd

from clipfarm_fusion import delta, policy


def horizon(*rows):
    return pd.DataFrame(
        [{"video_id": v, "url": f"u/{v}", "captured_at": "", "source_hash": h} for v, h in rows]
    )


def state(*rows):
    return pd.DataFrame(
        [{"video_id": v, "source_hash": h, "status": s, "retry_count": r} for v, h, s, r in rows]
    ).set_index("video_id")


def reasons(result):
    return dict(zip(result["video_id"], result["reason"], strict=True))


def test_new_video_enters_with_no_retries():
    result = delta.compute(horizon(("a", "h1")), state(("z", "h", policy.SUCCESS_FULL, 0)))
    assert reasons(result) == {"a": delta.NEW}
    assert result["retry_base"].tolist() == [0]


def test_terminal_statuses_with_same_hash_are_done():
    result = delta.compute(
        horizon(("a", "h"), ("b", "h")),
        state(("a", "h", policy.SUCCESS_FULL, 0), ("b", "h", policy.FAIL_TERMINAL, 4)),
    )
    assert result.empty


def test_changed_hash_reenters_and_resets_retries():
    result = delta.compute(horizon(("a", "new")), state(("a", "old", policy.FAIL_TERMINAL, 4)))
    assert reasons(result) == {"a": delta.HASH_CHANGED}
    assert result["retry_base"].tolist() == [0]


def test_non_terminal_statuses_reenter_keeping_retries():
    result = delta.compute(
        horizon(("a", "h"), ("b", "h"), ("c", "h")),
        state(
            ("a", "h", policy.FAIL, 2),
            ("b", "h", policy.MISSING_TEXT_PENDING, 0),
            ("c", "h", policy.MISSING_REQUIRED, 0),
        ),
    )
    assert reasons(result) == {"a": delta.NOT_TERMINAL, "b": delta.NOT_TERMINAL, "c": delta.NOT_TERMINAL}
    assert dict(zip(result["video_id"], result["retry_base"], strict=True)) == {"a": 2, "b": 0, "c": 0}


def test_placeholder_reenters_as_upgrade_check():
    result = delta.compute(horizon(("a", "h")), state(("a", "h", policy.SUCCESS_PLACEHOLDER, 0)))
    assert reasons(result) == {"a": delta.UPGRADE_CHECK}
    assert result["prior_status"].tolist() == [policy.SUCCESS_PLACEHOLDER]
