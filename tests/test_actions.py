"""Tests of data/actions.py: relabelling (proprio deltas, binarised gripper), statistics,
normalisation."""

import numpy as np
import pytest
import torch

from bridge_torch.data.actions import (
    STD_EPSILON,
    binarize_gripper,
    compute_statistics,
    denormalize,
    merge_statistics,
    normalize,
    relabel_actions,
)


def reference_binarize(gripper):
    """The JAX reverse scan, written as a plain loop (carry starts at the last raw value)."""
    out, carry = [], gripper[-1]
    for value in reversed(gripper):
        if value > 0.95:
            carry = 1.0
        elif value < 0.05:
            carry = 0.0
        out.append(carry)
    return np.array(out[::-1], np.float32)


def test_binarize_gripper_patterns():
    gripper = np.array([0.97, 0.5, 0.02, 0.5, 0.99, 0.5, 0.6], np.float32)
    # 0.5 after 0.97 takes the following closed 0; 0.5 before 0.99 takes 1; trailing run keeps 0.6
    expected = np.array([1, 0, 0, 1, 1, 0.6, 0.6], np.float32)
    np.testing.assert_array_equal(binarize_gripper(gripper), expected)


def test_binarize_gripper_edges():
    np.testing.assert_array_equal(binarize_gripper(np.array([0.3], np.float32)), np.float32([0.3]))
    # the thresholds are strict: 0.95 and 0.05 are intermediate
    np.testing.assert_array_equal(binarize_gripper(np.array([0.95, 0.05, 1.0, 0.0])),
                                  [1.0, 1.0, 1.0, 0.0])
    assert binarize_gripper(np.zeros(0)).shape == (0,)


def test_binarize_gripper_matches_reverse_scan():
    rng = np.random.default_rng(0)
    for _ in range(50):
        gripper = rng.choice([0.0, 0.02, 0.3, 0.5, 0.97, 1.0], size=rng.integers(1, 20))
        np.testing.assert_array_equal(binarize_gripper(gripper), reference_binarize(gripper))


def test_relabel_actions_deltas_and_gripper():
    proprio = np.array([[0, 0, 0, 0, 0, 0, 1.0],
                        [1, 2, 3, 0.1, 0.2, 0.3, 1.0],
                        [1, 4, 3, 0.1, 0.0, 0.3, 0.5],
                        [0, 4, 5, 0.0, 0.0, 0.6, 0.0]], np.float32)
    actions = np.full((3, 7), 9.0, np.float32)
    actions[:, 6] = [0.97, 0.5, 0.02]
    out = relabel_actions(proprio, actions)
    assert out.dtype == np.float32 and out.shape == (3, 7)
    np.testing.assert_allclose(out[:, :6], np.diff(proprio[:, :6], axis=0), atol=1e-7)
    np.testing.assert_array_equal(out[:, 6], [1, 0, 0])
    assert np.all(actions[:, :6] == 9.0)  # input untouched


def test_relabel_actions_rejects_bad_shapes():
    with pytest.raises(ValueError, match="T\\+1"):
        relabel_actions(np.zeros((3, 7)), np.zeros((3, 7)))
    with pytest.raises(ValueError, match="A >= 7"):
        relabel_actions(np.zeros((4, 7)), np.zeros((3, 4)))


def test_merge_statistics_equals_concatenation():
    rng = np.random.default_rng(1)
    parts = [rng.normal(loc=i, scale=i + 1, size=(n, 3)) for i, n in enumerate([5, 1, 40, 7])]
    merged = merge_statistics([compute_statistics(p) for p in parts])
    whole = compute_statistics(np.concatenate(parts))
    assert merged["count"] == whole["count"] == 53
    for key in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12, atol=1e-12)


def test_compute_statistics_values_and_errors():
    stats = compute_statistics(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert stats == {"count": 2, "mean": [2.0, 5.0], "std": [1.0, 0.0], "min": [1.0, 5.0],
                     "max": [3.0, 5.0]}
    with pytest.raises(ValueError):
        compute_statistics(np.zeros((0, 2)))
    with pytest.raises(ValueError):
        merge_statistics([])


STATS = {"mean": [1.0, -2.0, 0.5], "std": [2.0, 0.5, 0.0], "min": [-1.0, -3.0, 0.5],
         "max": [3.0, 1.0, 0.5], "count": 10}


@pytest.mark.parametrize("kind", ["normal", "bounds", "none"])
def test_normalize_round_trip_numpy_and_torch(kind):
    x = np.array([[0.0, -2.5, 0.5], [2.0, 0.5, 0.5], [3.0, -3.0, 0.5]], np.float32)
    for value in (x, torch.from_numpy(x)):
        y = normalize(value, STATS, kind)
        assert type(y) is type(value) and y.dtype == value.dtype
        back = denormalize(y, STATS, kind)
        np.testing.assert_allclose(np.asarray(back), x, atol=1e-5)
        assert np.all(np.isfinite(np.asarray(y)))


def test_normalize_values():
    x = np.array([[3.0, -1.5, 0.5]], np.float32)
    np.testing.assert_allclose(normalize(x, STATS, "normal"), [[1.0, 1.0, 0.0]])
    # the constant dim (std 0) is divided by the epsilon, not by zero
    nudged = x.astype(np.float64) + np.array([0, 0, 1e-6])
    np.testing.assert_allclose(normalize(nudged, STATS, "normal")[0, 2], 1e-6 / STD_EPSILON,
                               rtol=1e-2)
    np.testing.assert_allclose(normalize(np.array([[5.0, -1.0, 0.5]]), STATS, "bounds"),
                               [[1.0, 0.5, 0.0]])  # clipped to [0, 1]
    torch_y = normalize(torch.tensor([[3.0, -1.5, 0.5]], dtype=torch.float64), STATS, "normal")
    assert torch_y.dtype == torch.float64
    torch.testing.assert_close(torch_y, torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))


def test_unknown_normalization_kind():
    with pytest.raises(ValueError, match="normalization type"):
        normalize(np.zeros((1, 3)), STATS, "minmax")
    with pytest.raises(ValueError, match="normalization type"):
        denormalize(torch.zeros(1, 3), STATS, "Normal")
