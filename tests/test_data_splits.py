"""Train/val split: stratified per class, deterministic for (seed, val_ratio), disjoint and complete."""

import numpy as np
import pytest

from fasttrain.data.splits import stratified_split
from fasttrain.errors import UserError


def _labels():
    # uneven classes: 50, 7, 1 and 20 images, interleaved like a real listing would not be
    return np.random.default_rng(3).permutation(np.repeat([0, 1, 2, 3], [50, 7, 1, 20]))


def test_split_is_deterministic_for_seed_and_ratio():
    labels = _labels()
    first = stratified_split(labels, 0.2, seed=5)
    again = stratified_split(labels, 0.2, seed=5)
    other_seed = stratified_split(labels, 0.2, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other_seed[1])


def test_split_is_stratified_disjoint_and_complete():
    labels = _labels()
    train, val = stratified_split(labels, 0.2, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    val_counts = np.bincount(labels[val], minlength=4)
    assert val_counts.tolist() == [10, 1, 0, 4]  # round(n * 0.2); the single-image class stays in train
    assert set(labels[train]) == {0, 1, 2, 3}


def test_zero_ratio_means_no_val_and_bad_ratio_is_a_user_error():
    train, val = stratified_split(_labels(), 0.0, seed=0)
    assert val.size == 0 and train.size == 78
    for bad in (1.0, 1.5, -0.1, "x"):
        with pytest.raises(UserError, match="val_ratio"):
            stratified_split(_labels(), bad, seed=0)
