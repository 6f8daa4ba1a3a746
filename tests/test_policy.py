"""The gating table (docs/contract.md, one test per row) and the retry policy, on the pure functions."""

import numpy as np
import pytest

from clipfarm_fusion.core import policy

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)

H = "a" * 64
TERMINAL = ("no_captions", "fail_empty_transcript_terminal")


def verdict(*, text=False, available=True, status=None, text_hash=H, video=True, audio=True):
    return policy.gate(
        text_present=np.array([text]),
        text_state_available=available,
        text_status=np.array([status], dtype=object),
        text_hash=np.array([text_hash], dtype=object),
        source_hash=np.array([H], dtype=object),
        text_terminal_statuses=TERMINAL,
        video_present=np.array([video]),
        audio_present=np.array([audio]),
    )[0]


@pytest.mark.parametrize("missing", [{"video": False}, {"audio": False}, {"video": False, "audio": False}])
def test_missing_video_or_audio_is_missing_required(missing):
    assert verdict(text=True, **missing) == policy.MISSING_REQUIRED
    assert verdict(status="no_captions", **missing) == policy.MISSING_REQUIRED


def test_text_missing_and_state_unavailable():
    assert verdict(available=False, status="no_captions") == policy.MISSING_TEXT_UNAVAILABLE


def test_text_missing_and_no_text_row_is_pending():
    assert verdict(status=None) == policy.MISSING_TEXT_PENDING


def test_text_missing_and_status_not_terminal_is_pending():
    assert verdict(status="queued") == policy.MISSING_TEXT_PENDING


def test_text_missing_and_hash_differs_is_pending():
    assert verdict(status="no_captions", text_hash="b" * 64) == policy.MISSING_TEXT_PENDING


@pytest.mark.parametrize("status", TERMINAL)
def test_text_missing_and_empty_text_hash_counts_as_matching(status):
    assert verdict(status=status, text_hash="") == policy.SUCCESS_PLACEHOLDER


@pytest.mark.parametrize("status", [*TERMINAL, "queued"])
def test_text_missing_and_text_row_for_another_source_hash_is_pending(status):
    assert verdict(status=status, text_hash=H.upper()) == policy.MISSING_TEXT_PENDING
    assert verdict(status=status, text_hash=" " + H) == policy.MISSING_TEXT_PENDING


def test_text_hash_mismatch_flags_rows_for_another_source_hash_only():
    text_hash = np.array([H, "b" * 64, None, "", "b" * 64], dtype=object)
    source_hash = np.array([H, H, H, H, "b" * 64], dtype=object)
    mismatch = policy.text_hash_mismatch(text_hash, source_hash)
    assert mismatch.dtype == bool
    assert mismatch.tolist() == [False, True, False, False, False]
    statuses = policy.gate(
        text_present=np.zeros(5, dtype=bool),
        text_state_available=True,
        text_status=np.array(["no_captions"] * 5, dtype=object),
        text_hash=text_hash,
        source_hash=source_hash,
        text_terminal_statuses=TERMINAL,
    )
    assert (statuses == policy.MISSING_TEXT_PENDING).tolist() == mismatch.tolist()


@pytest.mark.parametrize("status", TERMINAL)
def test_text_missing_and_terminal_status_is_placeholder(status):
    assert verdict(status=status) == policy.SUCCESS_PLACEHOLDER


def test_old_text_state_without_source_hash_trusts_the_status():
    assert verdict(status="no_captions", text_hash=None) == policy.SUCCESS_PLACEHOLDER


def test_text_present_is_full_whatever_the_text_state_says():
    assert verdict(text=True, available=False) == policy.SUCCESS_FULL
    assert verdict(text=True, status="queued") == policy.SUCCESS_FULL


def test_text_verdict_alone_skips_before_required_fetch():
    out = policy.gate(
        text_present=np.array([False, False, True]),
        text_state_available=True,
        text_status=np.array(["queued", "no_captions", None], dtype=object),
        text_hash=np.array([H, H, None], dtype=object),
        source_hash=np.array([H, H, H], dtype=object),
        text_terminal_statuses=TERMINAL,
    )
    assert out.tolist() == [policy.MISSING_TEXT_PENDING, policy.SUCCESS_PLACEHOLDER, policy.SUCCESS_FULL]


def test_custom_terminal_statuses_are_honoured():
    out = policy.gate(
        text_present=np.array([False]),
        text_state_available=True,
        text_status=np.array(["no_captions"], dtype=object),
        text_hash=np.array([H], dtype=object),
        source_hash=np.array([H], dtype=object),
        text_terminal_statuses=("gave_up",),
    )
    assert out[0] == policy.MISSING_TEXT_PENDING


def test_failure_counts_up_then_turns_terminal_past_the_limit():
    retries, statuses = policy.after_failure(np.array([0, 1, 2, 3]), max_fail_retries=3)
    assert retries.tolist() == [1, 2, 3, 4]
    assert statuses.tolist() == [policy.FAIL, policy.FAIL, policy.FAIL, policy.FAIL_TERMINAL]


def test_zero_retries_allowed_means_first_failure_is_terminal():
    _, statuses = policy.after_failure(np.array([0]), max_fail_retries=0)
    assert statuses.tolist() == [policy.FAIL_TERMINAL]
