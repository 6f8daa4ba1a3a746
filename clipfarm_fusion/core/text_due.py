"""Pure: which late-text placeholders stay due for a recheck.

The text stage can rewrite a video's row a little before the video's text `.npy` is visible. The run
that sees that news finds no file, and the next run would not ask again (the text cursor has moved past
the row). So a placeholder rechecked on the text stage's news whose file was missing stays due: the
commit records it in the state's commit metadata (`text_due`, id -> rechecks left) and the next runs
recheck it whatever the text stage says, up to LATE_TEXT_RUNS runs, or until the file appears.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

LATE_TEXT_RUNS = 7  # rechecks of a late-text placeholder after the one that found no file
MAX_DUE = 10_000  # ids kept due at once (the list rides in a commit's metadata); more wait for news


def carried(due: Mapping[str, int], late: Iterable[str], checked: Iterable[str]) -> dict[str, int]:
    """The due list after a run: `late` are the placeholders this run rechecked on news and found no
    file for, `checked` every placeholder it rechecked. A late id starts with LATE_TEXT_RUNS rechecks
    (one fewer each time it is found late again, dropped at 0); a checked id that is not late is no
    longer due (upgraded, or its text is gone for good); the others keep their count."""
    late = list(dict.fromkeys(late))
    settled = set(checked) - set(late)
    kept = {
        video_id: left for video_id, left in due.items() if video_id not in settled and video_id not in late
    }
    for video_id in late:
        left = due[video_id] - 1 if video_id in due else LATE_TEXT_RUNS
        if left > 0:
            kept[video_id] = left
    return dict(sorted(kept.items())[:MAX_DUE])
