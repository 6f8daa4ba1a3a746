"""The fusion rules (docs/contract.md): hand-computed examples, widths, determinism, vectorisation over a batch."""

import numpy as np
import pytest

from clipfarm_fusion.core.kernels import FusionOptions, fuse, fused_dim

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)

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
    with_mask = fuse(strategy, V, A, T, PRESENT, FusionOptions(mask=True))
    without = fuse(strategy, V, A, T, PRESENT, FusionOptions(mask=False))
    np.testing.assert_array_equal(without, with_mask[:, :-1])


@pytest.mark.parametrize(("strategy", "width"), [("concat", 2305), ("sum_pool", 769), ("max_pool", 769)])
def test_768_inputs_give_the_documented_widths(strategy, width):
    rng = np.random.default_rng(0)
    batch = [rng.standard_normal((64, 768)).astype(np.float32) for _ in range(3)]
    present = rng.random(64) > 0.3
    out = fuse(strategy, *batch, present)
    assert out.shape == (64, width) and out.dtype == np.float32
    assert fused_dim(strategy, 768, 768, 768, FusionOptions()) == width
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


def test_mean_pool_averages_present_modalities_only():
    expected = [
        [(1 + 4 - 1) / 3, (-2 + 5 + 7) / 3, (3 + 0 + 0) / 3, 2 / 3, 1],
        [(0.5 - 3) / 2, (0 - 4) / 2, -1 / 2, 0, 0],  # placeholder: mean of video and audio only
    ]
    np.testing.assert_array_equal(fuse("mean_pool", V, A, T, PRESENT), np.array(expected, np.float32))


def test_weighted_pool_renormalises_weights_over_present_modalities():
    options = FusionOptions(weights=(2.0, 1.0, 1.0))
    expected = [
        [(2 * 1 + 4 - 1) / 4, (2 * -2 + 5 + 7) / 4, (2 * 3) / 4, 2 / 4, 1],
        [(2 * 0.5 - 3) / 3, (0 - 4) / 3, (2 * -1) / 3, 0, 0],
    ]
    out = fuse("weighted_pool", V, A, T, PRESENT, options)
    np.testing.assert_allclose(out, np.array(expected, np.float32), rtol=1e-6)
    assert out.dtype == np.float32


def test_l2_normalisation_scales_each_modality_and_keeps_zero_vectors_zero():
    video = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    audio = np.array([[0.0, 2.0], [1.0, 0.0]], np.float32)
    text = np.zeros((2, 2), np.float32)
    out = fuse("concat", video, audio, text, np.array([False, False]), FusionOptions(l2_normalize=True))
    np.testing.assert_allclose(out, [[0.6, 0.8, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0]], rtol=1e-6)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("strategy", ["mean_pool", "weighted_pool"])
def test_new_pools_are_bit_identical_across_batch_splits(strategy):
    rng = np.random.default_rng(2)
    batch = [rng.standard_normal((50, 768)).astype(np.float32) for _ in range(3)]
    present = rng.random(50) > 0.4
    options = FusionOptions(l2_normalize=True, weights=(0.5, 0.3, 0.2))
    whole = fuse(strategy, *batch, present, options)
    halves = np.vstack(
        [
            fuse(strategy, *[b[:20] for b in batch], present[:20], options),
            fuse(strategy, *[b[20:] for b in batch], present[20:], options),
        ]
    )
    assert whole.tobytes() == halves.tobytes()
    assert whole.shape == (50, 769)
