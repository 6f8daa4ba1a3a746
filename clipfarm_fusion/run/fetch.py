"""The fetch stage of one batch: which embedding objects exist, their bodies, the text gate, decoding.

Requests are the cost that matters here (botocore spends ~1.2 ms of CPU per GET): text first, since its
verdict can rule an item out before anything else is read; video and audio only for items that can still
be fused; and a LIST of a batch's key range instead of a 404 GET per missing object when the LIST is
cheaper (`_existing_keys`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.core import policy, worklist
from clipfarm_fusion.core.layout import MODALITIES, Layout
from clipfarm_fusion.core.npy import decode_vector
from clipfarm_fusion.errors import ItemError
from clipfarm_fusion.stores import s3_faults, s3io


@dataclass
class Batch:
    """One batch of a chunk, with what was fetched and decoded for it."""

    rows: pd.DataFrame
    present: dict[str, np.ndarray]
    text_status: np.ndarray
    text_hash: np.ndarray
    statuses: np.ndarray
    vectors: dict[str, list[np.ndarray | None]]
    errors: dict[int, str]
    reads: int  # items whose video and audio were read: what --max-items counts
    # Per modality, the ETag and VersionId of the object as read (None where not read or unversioned):
    # the lineage each manifest row records.
    etags: dict[str, np.ndarray]
    version_ids: dict[str, np.ndarray]


def active(reasons: np.ndarray, text_present: np.ndarray) -> np.ndarray:
    """Items a strategy works on (`reasons`: its delta reason per row, None when not in its delta): its
    delta, except placeholders whose text is still missing."""
    member = pd.notna(reasons)
    return member & ~((reasons == worklist.UPGRADE_CHECK) & ~text_present)


LIST_PAGE = 1000
LIST_BREAK_EVEN = 0.01  # one LIST page costs what one 404 GET costs: worth it from 1 missing key in 100


def _existing_keys(
    client, bucket: str, prefix: str, keys: list[str], keys_per_item: float
) -> set[str] | None:
    """Which of `keys` exist, from a LIST of their key range, when that costs fewer requests than a
    404 GET per missing object; None means GET every key and treat 404 as missing.

    The range of a batch holds about `len(keys) * keys_per_item` keys (`keys_per_item` = horizon / delta):
    a full day or a backfill lists a few pages per batch, a small daily delta over a big corpus would
    list the whole prefix and so GETs instead. A prefix fuller than the horizon predicts is cut off.
    """
    if not keys:
        return set()
    pages = math.ceil(len(keys) * keys_per_item / LIST_PAGE)
    if pages > len(keys) * LIST_BREAK_EVEN:
        return None
    return s3io.list_range(client, bucket, prefix, min(keys), max(keys), max_pages=2 * pages + 1)


def _fetch(
    client, config: FusionConfig, layout: Layout, modality: str, ids: list[str], keys_per_item: float
) -> list[s3io.Fetched | Exception]:
    """The modality's objects for `ids` as read (`body` None where missing), without a GET for objects
    a LIST showed are not there."""
    keys = [layout.embedding_key(modality, vid) for vid in ids]
    existing = s3_faults.with_patience(
        lambda: _existing_keys(client, config.bucket, layout.embedding_prefix(modality), keys, keys_per_item),
        f"listing s3://{config.bucket}/{layout.embedding_prefix(modality)}",
        config.s3_patience_seconds,
    )
    wanted = keys if existing is None else [k for k in keys if k in existing]
    fetched = s3io.get_many(
        client, config.bucket, wanted, config.fetch_threads, patience_s=config.s3_patience_seconds
    )
    return [fetched.get(k, _ABSENT) for k in keys]


_ABSENT = s3io.Fetched(None)  # listed as not there, so never read
_NOT_READ = s3io.Fetched(b"")  # not needed: the text verdict ruled the item out


def _body(fetched: s3io.Fetched | Exception) -> bytes | None | Exception:
    return fetched if isinstance(fetched, Exception) else fetched.body


def _lineage(fetched: list[s3io.Fetched | Exception]) -> tuple[np.ndarray, np.ndarray]:
    """(ETags, VersionIds) of what was read, None where nothing was."""
    read = [f if isinstance(f, s3io.Fetched) and f.body else _ABSENT for f in fetched]
    return (
        np.array([f.etag for f in read], dtype=object),
        np.array([f.version_id for f in read], dtype=object),
    )


def _strings(column: pd.Series) -> np.ndarray:
    """Object array of str or None (pandas reads a missing string back as NaN)."""
    return np.array([value if isinstance(value, str) else None for value in column], dtype=object)


def fetch_batch(
    client,
    config: FusionConfig,
    layout: Layout,
    rows: pd.DataFrame,
    reasons: list[np.ndarray],
    text_problem: str | None,
    keys_per_item: float,
    budget: int | None,
) -> Batch:
    """Read text first; read video and audio only for items the text verdict does not rule out, and for
    at most `budget` of them (None: no cap): the batch then ends before the first item over the cap.
    `rows` carry the text stage's `text_status`/`text_hash` (looked up by the plan); `reasons` holds each
    strategy's delta reasons for them."""
    ids = rows["video_id"].tolist()
    text_fetched = _fetch(client, config, layout, "text", ids, keys_per_item)
    text_present = np.array([_body(f) is not None for f in text_fetched], dtype=bool)
    text_status, text_hash = (_strings(rows[column]) for column in ("text_status", "text_hash"))
    source_hash = rows["source_hash"].to_numpy(dtype=object)

    def gate_inputs() -> dict:
        return dict(
            text_present=text_present,
            text_state_available=text_problem is None,
            text_status=text_status,
            text_hash=text_hash,
            source_hash=source_hash,
            text_terminal_statuses=config.text_terminal_statuses,
        )

    wanted = np.zeros(len(ids), dtype=bool)
    for strategy_reasons in reasons:
        wanted |= active(strategy_reasons, text_present)
    need_required = wanted & ~np.isin(policy.gate(**gate_inputs()), list(policy.TEXT_SKIP_STATUSES))
    if budget is not None and np.count_nonzero(need_required) > budget:
        cut = int(np.flatnonzero(need_required)[budget])
        rows, ids, text_fetched = rows.iloc[:cut], ids[:cut], text_fetched[:cut]
        text_present, text_status, text_hash, source_hash, need_required = (
            column[:cut] for column in (text_present, text_status, text_hash, source_hash, need_required)
        )
    count = len(ids)
    fetch_ids = [vid for vid, need in zip(ids, need_required, strict=True) if need]
    reads: dict[str, list[s3io.Fetched | Exception]] = {"text": text_fetched}
    for modality in ("video", "audio"):
        fetched = dict(
            zip(fetch_ids, _fetch(client, config, layout, modality, fetch_ids, keys_per_item), strict=True)
        )
        reads[modality] = [fetched.get(vid, _NOT_READ) for vid in ids]
    bodies = {m: [_body(f) for f in reads[m]] for m in MODALITIES}
    lineage = {m: _lineage(reads[m]) for m in MODALITIES}
    present = {m: np.array([b is not None for b in bodies[m]], dtype=bool) for m in MODALITIES}
    statuses = policy.gate(**gate_inputs(), video_present=present["video"], audio_present=present["audio"])
    vectors: dict[str, list[np.ndarray | None]] = {m: [None] * count for m in MODALITIES}
    errors: dict[int, str] = {}
    for i in np.flatnonzero(np.isin(statuses, policy.FUSED_STATUSES)):
        messages = []
        for modality in MODALITIES:
            body = bodies[modality][i]
            if body is None:
                continue
            try:
                if isinstance(body, Exception):
                    raise ItemError(ids[i], f"{modality} embedding: fetch failed ({body})")
                vectors[modality][i] = decode_vector(body, ids[i], modality)
            except ItemError as exc:
                messages.append(exc.message)
        if messages:
            errors[int(i)] = "; ".join(messages)
    return Batch(
        rows.reset_index(drop=True),
        present,
        text_status,
        text_hash,
        statuses,
        vectors,
        errors,
        reads=int(np.count_nonzero(need_required)),
        etags={m: lineage[m][0] for m in MODALITIES},
        version_ids={m: lineage[m][1] for m in MODALITIES},
    )


def skip_reason(status: str, batch: Batch, i: int, text_problem: str | None) -> str | None:
    """The error text stored for a skipped item: what is missing and why it waits."""
    text_status = batch.text_status[i]
    if status == policy.MISSING_REQUIRED:
        missing = [m for m in ("video", "audio") if not batch.present[m][i]]
        return f"{' and '.join(missing)} embedding missing"
    if status == policy.MISSING_TEXT_UNAVAILABLE:
        return f"text embedding missing and {text_problem}"
    if status == policy.MISSING_TEXT_PENDING:
        if not text_status:
            return "text embedding missing; no text stage row yet"
        if policy.text_hash_mismatch(batch.text_hash[i : i + 1], batch.rows["source_hash"].iloc[i : i + 1])[
            0
        ]:
            return (
                f"text embedding missing; the text stage's row (status {text_status!r}) is for another "
                f"source_hash ({batch.text_hash[i][:12]}…, this URL hashes to "
                f"{batch.rows.at[i, 'source_hash'][:12]}…): waiting for the text stage to process the current URL"
            )
        return f"text embedding missing; text stage status {text_status!r} is not terminal yet"
    return None
