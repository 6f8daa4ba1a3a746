"""The work-list rules (docs/contract.md) on the pure `worklist.compute`."""

import pandas as pd
import pytest

from clipfarm_fusion.core import policy, worklist

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)


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
    result = worklist.compute(horizon(("a", "h1")), state(("z", "h", policy.SUCCESS_FULL, 0)))
    assert reasons(result) == {"a": worklist.NEW}
    assert result["retry_base"].tolist() == [0]


def test_terminal_statuses_with_same_hash_are_done():
    result = worklist.compute(
        horizon(("a", "h"), ("b", "h")),
        state(("a", "h", policy.SUCCESS_FULL, 0), ("b", "h", policy.FAIL_TERMINAL, 4)),
    )
    assert result.empty


def test_changed_hash_reenters_and_resets_retries():
    result = worklist.compute(horizon(("a", "new")), state(("a", "old", policy.FAIL_TERMINAL, 4)))
    assert reasons(result) == {"a": worklist.HASH_CHANGED}
    assert result["retry_base"].tolist() == [0]


def test_non_terminal_statuses_reenter_keeping_retries():
    result = worklist.compute(
        horizon(("a", "h"), ("b", "h"), ("c", "h")),
        state(
            ("a", "h", policy.FAIL, 2),
            ("b", "h", policy.MISSING_TEXT_PENDING, 0),
            ("c", "h", policy.MISSING_REQUIRED, 0),
        ),
    )
    assert reasons(result) == {
        "a": worklist.NOT_TERMINAL,
        "b": worklist.NOT_TERMINAL,
        "c": worklist.NOT_TERMINAL,
    }
    assert dict(zip(result["video_id"], result["retry_base"], strict=True)) == {"a": 2, "b": 0, "c": 0}


def test_placeholder_reenters_as_upgrade_check():
    result = worklist.compute(horizon(("a", "h")), state(("a", "h", policy.SUCCESS_PLACEHOLDER, 0)))
    assert reasons(result) == {"a": worklist.UPGRADE_CHECK}
    assert result["prior_status"].tolist() == [policy.SUCCESS_PLACEHOLDER]
