"""Magma's robot head: action normalisation stats and the 256-bin action tokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from magma_core.codecs.action_tokenizer import ACTION_DIM, GRIPPER_INDEX, ActionNormStats, ActionTokenizer
from magma_core.errors import InvalidInputError

FAST = settings(max_examples=200, deadline=None)
VOCAB = 32_000

STATS = ActionNormStats(
    q01=[-0.05, -0.04, -0.03, -0.2, -0.1, -0.3, 0.0],
    q99=[0.05, 0.06, 0.03, 0.2, 0.15, 0.3, 1.0],
)


@st.composite
def actions_inside(draw, stats=STATS, max_rows=6):
    """(N, 7) actions with every value inside [q01, q99]."""
    n = draw(st.integers(1, max_rows))
    unit = draw(hnp.arrays(np.float64, (n, ACTION_DIM), elements=st.floats(0.0, 1.0)))
    return stats.q01 + unit * (stats.q99 - stats.q01)


@FAST
@given(actions_inside(), st.sampled_from([256, 64, 7]))
def test_round_trip_within_half_a_bin_in_normalised_units(actions, n_bins):
    tok = ActionTokenizer(VOCAB, STATS, n_bins=n_bins)
    ids = tok.encode(actions)
    assert ids.shape == actions.shape and ids.dtype == np.int64
    assert ((ids >= VOCAB - n_bins) & (ids < VOCAB)).all()
    back = tok.decode(ids)
    error = np.abs(STATS.normalize(back) - STATS.normalize(actions))
    assert error.max() <= 1.0 / n_bins + 1e-9
    np.testing.assert_array_equal(tok.encode(back), ids)  # bin centres re-encode to themselves


@FAST
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.just(ACTION_DIM)), elements=st.floats(-1e6, 1e6)))
def test_any_finite_action_maps_into_the_last_256_ids(actions):
    tok = ActionTokenizer(VOCAB, STATS)
    ids = tok.encode(actions)
    assert tok.is_action_token(ids).all()
    assert ids.min() >= VOCAB - 256 and ids.max() <= VOCAB - 1
    decoded = tok.decode(ids)
    assert (decoded >= STATS.q01 - 1e-12).all() and (decoded <= STATS.q99 + 1e-12).all()  # clipped range


def test_bin_edges_map_to_first_and_last_ids():
    tok = ActionTokenizer(VOCAB, STATS)
    np.testing.assert_array_equal(tok.encode(STATS.q01), np.full(7, VOCAB - 256))
    np.testing.assert_array_equal(tok.encode(STATS.q99), np.full(7, VOCAB - 1))
    np.testing.assert_array_equal(tok.encode(STATS.q99 * 10), np.full(7, VOCAB - 1))  # clipped
    middle = (STATS.q01 + STATS.q99) / 2
    np.testing.assert_array_equal(tok.encode(middle), np.full(7, VOCAB - 128))
    assert tok.action_id_range == (VOCAB - 256, VOCAB)


def test_gripper_convention_open_is_low_closed_is_high():
    tok = ActionTokenizer(VOCAB, STATS)
    open_, closed = np.zeros(7), np.zeros(7)
    closed[GRIPPER_INDEX] = 1.0
    assert tok.encode(open_)[GRIPPER_INDEX] == VOCAB - 256
    assert tok.encode(closed)[GRIPPER_INDEX] == VOCAB - 1
    assert tok.decode(tok.encode(closed))[GRIPPER_INDEX] > 0.99


def test_batch_shapes_are_kept():
    tok = ActionTokenizer(VOCAB, STATS)
    actions = np.zeros((2, 3, 7))
    assert tok.encode(actions).shape == (2, 3, 7)
    assert tok.decode(tok.encode(actions)).shape == (2, 3, 7)


def test_is_action_token():
    tok = ActionTokenizer(1000, STATS)
    np.testing.assert_array_equal(tok.is_action_token([0, 743, 744, 999, 1000, -1]), [False, False, True, True, False, False])
    assert tok.is_action_token(999) is True


def test_decode_rejects_non_action_ids_and_bad_shapes():
    tok = ActionTokenizer(1000, STATS)
    good = tok.encode(np.zeros(7))
    for bad_id in (743, 1000, -1):
        ids = good.copy()
        ids[3] = bad_id
        with pytest.raises(InvalidInputError, match="not action tokens"):
            tok.decode(ids)
    with pytest.raises(InvalidInputError, match="shape"):
        tok.decode(good[:6])
    with pytest.raises(InvalidInputError, match="integers"):
        tok.decode(good.astype(np.float64))


def test_encode_rejects_nan_and_wrong_shapes():
    tok = ActionTokenizer(VOCAB, STATS)
    for bad in (np.full(7, np.nan), np.array([0, 0, 0, 0, 0, 0, np.inf])):
        with pytest.raises(InvalidInputError, match="NaN"):
            tok.encode(bad)
    with pytest.raises(InvalidInputError, match="shape"):
        tok.encode(np.zeros(6))
    with pytest.raises(InvalidInputError, match="numeric"):
        tok.encode(["a"] * 7)


def test_constructor_validation():
    with pytest.raises(InvalidInputError, match="vocab_size"):
        ActionTokenizer(256, STATS)
    with pytest.raises(InvalidInputError, match="n_bins"):
        ActionTokenizer(VOCAB, STATS, n_bins=1)
    with pytest.raises(InvalidInputError, match="ActionNormStats"):
        ActionTokenizer(VOCAB, {"q01": [0] * 7})


# --------------------------------------------------------------------------- stats


def test_stats_from_actions_percentiles_and_fixed_gripper():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(10_001, 7))
    actions[:, GRIPPER_INDEX] = 0.0  # never closes in this data
    stats = ActionNormStats.from_actions(actions)
    np.testing.assert_allclose(stats.q01[:6], np.quantile(actions[:, :6], 0.01, axis=0))
    np.testing.assert_allclose(stats.q99[:6], np.quantile(actions[:, :6], 0.99, axis=0))
    assert (stats.q01[GRIPPER_INDEX], stats.q99[GRIPPER_INDEX]) == (0.0, 1.0)
    free = ActionNormStats.from_actions(actions, gripper_fixed_range=False)
    assert free.q01[GRIPPER_INDEX] == free.q99[GRIPPER_INDEX] == 0.0


def test_stats_reject_gripper_outside_unit_range():
    actions = np.zeros((5, 7))
    actions[:, GRIPPER_INDEX] = -1.0
    with pytest.raises(InvalidInputError, match="gripper"):
        ActionNormStats.from_actions(actions)


def test_constant_dimension_does_not_divide_by_zero():
    stats = ActionNormStats(q01=[0.0, 0, 0, 0, 0, 0.5, 0], q99=[1.0, 1, 1, 1, 1, 0.5, 1])
    tok = ActionTokenizer(VOCAB, stats)
    with np.errstate(all="raise"):
        actions = np.array([[0.5, 0.5, 0.5, 0.5, 0.5, 0.7, 1.0]])
        normalized = stats.normalize(actions)
        decoded = tok.decode(tok.encode(actions))
    assert normalized[0, 5] == 0.0
    assert decoded[0, 5] == 0.5


def test_stats_json_round_trip_and_validation():
    data = json.loads(json.dumps(STATS.to_dict()))
    loaded = ActionNormStats.from_dict(data)
    np.testing.assert_array_equal(loaded.q01, STATS.q01)
    np.testing.assert_array_equal(loaded.q99, STATS.q99)
    bad_cases = [
        ({"q01": [0] * 7}, "q99"),
        ({"q01": [0] * 6, "q99": [1] * 6}, "shape"),
        ({"q01": [0] * 6 + [float("nan")], "q99": [1] * 7}, "NaN"),
        ({"q01": [1] * 7, "q99": [0] * 7}, "q99 < q01"),
        ({"q01": ["x"] * 7, "q99": [1] * 7}, "numbers"),
        ([1, 2], "mapping"),
    ]
    for data, message in bad_cases:
        with pytest.raises(InvalidInputError, match=message):
            ActionNormStats.from_dict(data)


def test_stats_are_read_only():
    with pytest.raises(ValueError):
        STATS.q01[0] = 5.0
