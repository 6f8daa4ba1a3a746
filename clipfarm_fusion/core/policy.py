"""Pure: the text gating policy (docs/contract.md, "The gating policy") as one table of cases, evaluated over a whole batch.

Video and audio are required; text is optional only when the text stage says, for this very
source_hash, that there will never be any (a terminal status). A text-stage row with no hash (None:
an old file without the column; or the empty string) counts as being for this source_hash; one with
another hash is for another version of the video and vouches for nothing, so the item waits
(`text_hash_mismatch` tells those apart for the error message). The text rows are judged first
because they need no fetch: an item the text stage rules out is skipped before its video and audio
are read. Either way such an item is skipped and stays in the delta.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SUCCESS_FULL = "success_full"
SUCCESS_PLACEHOLDER = "success_text_placeholder"
MISSING_REQUIRED = "missing_required_modality"
MISSING_TEXT_UNAVAILABLE = "missing_text_state_unavailable"
MISSING_TEXT_PENDING = "missing_text_pending"
FAIL = "fail"
FAIL_TERMINAL = "fail_terminal"
INVALID_VIDEO_ID = "invalid_video_id"

TERMINAL_STATUSES = frozenset({SUCCESS_FULL, SUCCESS_PLACEHOLDER, FAIL_TERMINAL})
FUSED_STATUSES = (SUCCESS_FULL, SUCCESS_PLACEHOLDER)
TEXT_SKIP_STATUSES = frozenset({MISSING_TEXT_UNAVAILABLE, MISSING_TEXT_PENDING})


def _no_hash(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and value != value)  # None, "", NaN


def text_hash_matches(text_hash: np.ndarray, source_hash: np.ndarray) -> np.ndarray:
    """`(N,)` bool: the text stage's hash vouches for our source_hash: equal, or empty (None / "")."""
    return np.array([_no_hash(h) or h == s for h, s in zip(text_hash, source_hash, strict=True)], dtype=bool)


def text_hash_mismatch(text_hash: np.ndarray, source_hash: np.ndarray) -> np.ndarray:
    """`(N,)` bool: the text stage has a hash for the item and it is NOT our source_hash, i.e. its row
    is about another version of the video. Where the text stage has no row, `text_hash` is None and
    this is False. For explaining a `missing_text_pending` skip ("the text stage row is for another
    source_hash") instead of quoting a status that does not apply to this source_hash."""
    return ~text_hash_matches(text_hash, source_hash)


def gate(
    *,
    text_present: np.ndarray,
    text_state_available: bool,
    text_status: np.ndarray,
    text_hash: np.ndarray,
    source_hash: np.ndarray,
    text_terminal_statuses: Iterable[str],
    video_present: np.ndarray | None = None,
    audio_present: np.ndarray | None = None,
) -> np.ndarray:
    """Status per item `(N,)` from the gating table; first matching case wins.

    `text_status`/`text_hash` hold the text stage's row (None where it has no row, or no hash
    column in old files; an empty-string hash counts as matching, like None). Leave
    `video_present`/`audio_present` out to judge text alone, before the required modalities are
    fetched.
    """
    count = len(text_present)
    text_present = np.asarray(text_present, dtype=bool)
    has_row = np.array([s is not None for s in text_status], dtype=bool)
    hash_matches = text_hash_matches(text_hash, source_hash)
    terminal = np.isin(np.asarray(text_status, dtype=object), list(text_terminal_statuses)) & hash_matches
    required = np.ones(count, dtype=bool)
    if video_present is not None:
        required &= np.asarray(video_present, dtype=bool)
    if audio_present is not None:
        required &= np.asarray(audio_present, dtype=bool)
    text_missing = ~text_present
    cases = [
        (text_missing & (not text_state_available), MISSING_TEXT_UNAVAILABLE),
        (text_missing & ~has_row, MISSING_TEXT_PENDING),
        (text_missing & ~terminal, MISSING_TEXT_PENDING),
        (~required, MISSING_REQUIRED),
        (text_present, SUCCESS_FULL),
    ]
    return np.select([c for c, _ in cases], [s for _, s in cases], default=SUCCESS_PLACEHOLDER).astype(object)


def after_failure(previous_retries: np.ndarray, max_fail_retries: int) -> tuple[np.ndarray, np.ndarray]:
    """the retry and drift rules (docs/contract.md): a failure adds one retry; past `max_fail_retries` it is terminal.

    `previous_retries` must already be reset to 0 where the source_hash changed.
    Returns (retry_count, status) per item.
    """
    retries = np.asarray(previous_retries, dtype=np.int64) + 1
    return retries, np.where(retries > max_fail_retries, FAIL_TERMINAL, FAIL).astype(object)
