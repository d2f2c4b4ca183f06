"""GoalBelief: the model's per-frame goal rankings smoothed over frames, associated by position, reset by the hand."""
from __future__ import annotations

import numpy as np
import pytest

from magma_core.errors import InvalidInputError
from magma_core.policies.goal_belief import GoalBelief

BLUE, PINK, MAT = (35.0, 58.0), (30.0, 79.0), (81.0, 67.0)
OPEN, HOLDING, EMPTY = 0.08, 0.045, 0.0


def scores_for(probabilities):
    return np.log(np.asarray(probabilities, dtype=np.float64))


def test_one_wrong_frame_does_not_move_the_goal():
    belief = GoalBelief(decay=0.8)
    for _ in range(4):
        assert belief.update([BLUE, PINK, MAT], scores_for([0.8, 0.1, 0.1]), OPEN) == 0
    # The hand covers the blue block: its description changes and one frame ranks pink first. Marks are renumbered
    # and listed in another order, so the belief follows positions, not ids or list order.
    assert belief.update([PINK, (35.5, 59.0), MAT], scores_for([0.7, 0.2, 0.1]), OPEN) == 1
    # Evidence that persists does move it.
    picks = [belief.update([BLUE, PINK, MAT], scores_for([0.05, 0.9, 0.05]), OPEN) for _ in range(6)]
    assert picks[0] == 0 and picks[-1] == 1


def test_no_memory_is_the_frame_own_best():
    belief = GoalBelief(decay=0.0)
    assert belief.update([BLUE, PINK], scores_for([0.9, 0.1]), OPEN) == 0
    assert belief.update([BLUE, PINK], scores_for([0.4, 0.6]), OPEN) == 1


def test_a_change_of_hand_state_starts_afresh():
    belief = GoalBelief(decay=0.9)
    for _ in range(10):
        belief.update([BLUE, MAT], scores_for([0.95, 0.05]), OPEN)
    # Grasped: the goal is now the mat, and the long history for the block does not count.
    assert belief.update([BLUE, MAT], scores_for([0.3, 0.7]), HOLDING) == 1
    assert belief.hand_state == "holding" and belief.resets == 1
    assert belief.hand_state_of(EMPTY) == "empty" and belief.hand_state_of(None) == "unknown"
    belief.reset()
    assert belief.hand_state is None and belief.resets == 0


def test_a_newly_seen_mark_must_earn_its_belief():
    belief = GoalBelief(decay=0.8)
    for _ in range(3):
        belief.update([BLUE, MAT], scores_for([0.9, 0.1]), OPEN)
    # A mark appears for the first time with a high score: one frame is not enough.
    assert belief.update([BLUE, MAT, PINK], scores_for([0.2, 0.1, 0.7]), OPEN) == 0


@pytest.mark.parametrize("kwargs", [{"decay": 1.0}, {"decay": -0.1}, {"match_radius_px": 0}, {"open_m": 0.01, "empty_m": 0.02}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InvalidInputError):
        GoalBelief(**kwargs)


def test_bad_frames_are_refused():
    belief = GoalBelief()
    with pytest.raises(InvalidInputError, match="one score per candidate"):
        belief.update([BLUE, PINK], [0.0], OPEN)
    with pytest.raises(InvalidInputError, match="one score per candidate"):
        belief.update([], [], OPEN)
    with pytest.raises(InvalidInputError, match="finite"):
        belief.update([BLUE], [float("nan")], OPEN)


def test_leading_names_the_candidate_with_the_most_belief_without_changing_it():
    belief = GoalBelief(decay=0.8)
    points = [(10.0, 10.0), (50.0, 50.0)]
    assert belief.leading(points, 0.08) is None  # nothing to go by yet
    belief.update(points, [0.0, 3.0], 0.08)
    moved = [(51.0, 49.0), (11.0, 9.0)]  # the same two things, listed the other way round this frame
    assert belief.leading(moved, 0.08) == 0
    assert belief.leading(moved, 0.08) == 0  # read-only
    assert belief.leading(moved, 0.03) is None  # the hand's state changed: the belief will start afresh
    assert belief.leading([(90.0, 90.0)], 0.08) is None  # nothing seen before
    assert belief.update(moved, [0.0, 0.0], 0.08) == 0
