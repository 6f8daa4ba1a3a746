"""DESIGN §5 fusion: hand-computed examples, widths, determinism, vectorisation over a batch."""

import numpy as np
import pytest

from clipfarm_fusion.fuse import fuse, fused_dim

V = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]], dtype=np.float32)
A = np.array([[4.0, 5.0], [-3.0, -4.0]], dtype=np.float32)
T = np.array([[-1.0, 7.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)  # row 2: placeholder
PRESENT = np.array([True, False])


def test_concat_hand_computed():
    expected = [
        [1, -2, 3, 4, 5, -1, 7, 0, 2, 1],
        [0.5, 0, -1, -3, -4, 0, 0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(fuse("concat", V, A, T, PRESENT), np.array(expected, np.float32))


def test_sum_pool_zero_pads_then_adds():
    expected = [
        [1 + 4 - 1, -2 + 5 + 7, 3 + 0, 2, 1],
        [0.5 - 3, 0 - 4, -1, 0, 0],
    ]
    np.testing.assert_array_equal(fuse("sum_pool", V, A, T, PRESENT), np.array(expected, np.float32))


def test_max_pool_counts_padding_as_zero():
    expected = [
        [4, 7, 3, 2, 1],
        [0.5, 0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(fuse("max_pool", V, A, T, PRESENT), np.array(expected, np.float32))


@pytest.mark.parametrize("strategy", ["concat", "sum_pool", "max_pool"])
def test_mask_can_be_switched_off(strategy):
    with_mask = fuse(strategy, V, A, T, PRESENT, mask=True)
    without = fuse(strategy, V, A, T, PRESENT, mask=False)
    np.testing.assert_array_equal(without, with_mask[:, :-1])


@pytest.mark.parametrize(("strategy", "width"), [("concat", 2305), ("sum_pool", 769), ("max_pool", 769)])
def test_768_inputs_give_the_documented_widths(strategy, width):
    rng = np.random.default_rng(0)
    batch = [rng.standard_normal((64, 768)).astype(np.float32) for _ in range(3)]
    present = rng.random(64) > 0.3
    out = fuse(strategy, *batch, present)
    assert out.shape == (64, width) and out.dtype == np.float32
    assert fused_dim(strategy, 768, 768, 768, mask=True) == width
    np.testing.assert_array_equal(out[:, -1], present.astype(np.float32))


@pytest.mark.parametrize("strategy", ["concat", "sum_pool", "max_pool"])
def test_bit_identical_across_runs_and_batch_splits(strategy):
    rng = np.random.default_rng(1)
    batch = [rng.standard_normal((100, 768)).astype(np.float32) for _ in range(3)]
    present = np.ones(100, dtype=bool)
    first = fuse(strategy, *batch, present)
    again = fuse(strategy, *[b.copy() for b in batch], present)
    halves = np.vstack(
        [
            fuse(strategy, *[b[:37] for b in batch], present[:37]),
            fuse(strategy, *[b[37:] for b in batch], present[37:]),
        ]
    )
    assert first.tobytes() == again.tobytes() == halves.tobytes()


def test_float64_inputs_are_cast_to_float32():
    out = fuse("concat", V.astype(np.float64), A, T, PRESENT)
    assert out.dtype == np.float32


def test_mismatched_row_counts_are_rejected():
    with pytest.raises(ValueError, match="same number of rows"):
        fuse("concat", V, A[:1], T, PRESENT)
