"""Which videos a run looks at, in O(delta) as far as the inputs allow: those some strategy has not
processed in their current form, open items, and the placeholders to recheck for text (the text stage's
news, the late-text due list, and with a full recheck every placeholder whose text file exists)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from clipfarm_fusion.core.known import KnownIndex
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.stores import s3_faults, s3io, state, text_state


@dataclass(frozen=True)
class Candidates:
    """Which horizon rows a run hashes and compares (see `metadata.scan`), and per strategy which
    placeholders the text stage has news for (None: every placeholder among the candidates)."""

    known: KnownIndex
    also: pa.Array
    recheck: dict[str, set[str] | None]


def text_files(client, bucket: str, layout: Layout, patience_s: float) -> list[str]:
    """The video_ids whose text `.npy` exists, from one LIST of the text prefix: what a full text recheck
    (`--recheck-text`) upgrades, whatever the text stage's rows say."""
    prefix = layout.embedding_prefix("text")
    keys = s3_faults.with_patience(
        lambda: s3io.list_keys(client, bucket, prefix), "listing the text embeddings", patience_s
    )
    return [key[len(prefix) : -len(".npy")] for key in keys if key.endswith(".npy")]


def select(
    stores: dict[str, state.StateStore],
    text: text_state.TextState,
    terminal: tuple[str, ...],
    present: list[str],
) -> Candidates:
    """Candidates in O(delta) as far as the inputs allow: videos some strategy has not processed in their
    current form (see `metadata.scan`), open items, and placeholders the text stage has news for: its
    row changed since that strategy's last commit, or (on the first run, with no cursor yet) its status
    is no longer a terminal one such as `no_captions`. Without a usable signal (the text stage
    unreadable, or no `processed_at` column in it) every placeholder is rechecked, a text GET each.
    `present` (a full text recheck's listing) adds the placeholders whose text file exists."""
    known: KnownIndex | None = None
    also: list[pa.Array] = []
    recheck: dict[str, set[str] | None] = {}
    for name, store in stores.items():
        known = store.known() if known is None else known.agreeing(store.known())
        also.append(store.open_ids())
        changed = None if text.problem else text.changed_since(store.text_cursor)
        if changed is not None and store.text_cursor is None:  # no cursor yet: the status tells
            candidates = store.placeholders()
            statuses, _ = text.lookup(candidates.to_pylist())
            changed = candidates.filter(
                pa.array([s not in terminal for s in statuses], pa.bool_())
            ).to_pylist()
        if changed is None:
            also.append(store.placeholders())
            recheck[name] = None
        else:
            due = list(store.text_due or {})  # late text: rechecked whatever the text stage says
            among = pa.array([*changed, *due, *present], pa.string())
            placeholders = store.placeholders(among=among)
            also.append(placeholders)
            recheck[name] = set(placeholders.to_pylist())
    return Candidates(
        known=known if known is not None else KnownIndex.empty(),
        also=pa.concat_arrays([a.cast(pa.string()) for a in also]) if also else pa.array([], pa.string()),
        recheck=recheck,
    )
