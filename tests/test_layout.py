"""Unsafe video ids never become keys or paths."""

import pytest

from clipfarm_fusion.core.layout import Layout, part_number, video_id_problem
from clipfarm_fusion.errors import ItemError

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)


@pytest.mark.parametrize(
    "video_id",
    ["a/b", "..", "a..b", "x\\y", "tab\there", "nul\x00", "del\x7f", "", "v" * 257, "../../etc/passwd"],
)
def test_unsafe_ids_are_rejected(video_id):
    assert video_id_problem(video_id)
    with pytest.raises(ItemError, match="unsafe video_id"):
        Layout("clipfarm").embedding_key("video", video_id)


@pytest.mark.parametrize("video_id", ["abc_DEF-123", "v" * 256, "émoji🎬", "a.b"])
def test_safe_ids_make_keys(video_id):
    assert video_id_problem(video_id) is None
    assert Layout("clipfarm").embedding_key("text", video_id) == f"clipfarm/embeddings/text/{video_id}.npy"


def test_part_numbers():
    layout = Layout("r")
    from datetime import date

    key = layout.shard_key("concat", date(2026, 3, 1), 12)
    assert key == "r/fused/concat/shards/date=2026-03-01/part-0012.npz"
    assert part_number(key) == 12
    assert part_number("r/fused/concat/shards/date=2026-03-01/notes.txt") is None
