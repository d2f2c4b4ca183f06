"""Trace-of-Mark text codec: round trips, depth bins, pixel conversion and a parser that never raises."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from magma_core.codecs.trace_text import (
    DEFAULT_N_DEPTH_BINS,
    ERROR_CODES,
    MAX_INPUT_CHARS,
    TRACE_END,
    TRACE_START,
    DepthBinning,
    GridTrace,
    ParseResult,
    TraceParseException,
    encode_marks,
    encode_traces,
    grid_traces_from_traces,
    marks_from_grid_traces,
    parse_mark_ids,
    parse_traces,
    parse_traces_strict,
    traces_from_grid_traces,
)
from magma_core.errors import InvalidInputError
from magma_core.tom.types import Trace

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def grid_trace_lists(draw, is_25d: bool | None = None):
    """1-5 marks with distinct ids, one shared length, all 2D or all 2.5D."""
    if is_25d is None:
        is_25d = draw(st.booleans())
    n_marks = draw(st.integers(1, 5))
    n_steps = draw(st.integers(1, 12))
    ids = draw(st.lists(st.integers(0, 999), min_size=n_marks, max_size=n_marks, unique=True))
    cells = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=n_steps, max_size=n_steps)
    out = []
    for mark_id in ids:
        if is_25d:
            depth = draw(st.lists(st.integers(0, DEFAULT_N_DEPTH_BINS - 1), min_size=n_steps, max_size=n_steps))
            grip = draw(st.lists(st.integers(0, 1), min_size=n_steps, max_size=n_steps))
            out.append(GridTrace(mark_id, draw(cells), depth, grip))
        else:
            out.append(GridTrace(mark_id, draw(cells)))
    return out


def assert_named_error(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    assert not result.ok
    assert result.traces == []
    assert result.error.code in ERROR_CODES and result.error.code != "internal", result.error
    assert result.error.message


# --------------------------------------------------------------------------- round trips


@FAST
@given(grid_trace_lists(), st.booleans())
def test_encode_then_parse_gives_identical_traces(traces, with_markers):
    text = encode_traces(traces, with_markers=with_markers)
    result = parse_traces(text)
    assert result.ok, result.error
    assert result.traces == traces
    assert [t.is_25d for t in result.traces] == [t.is_25d for t in traces]


@FAST
@given(grid_trace_lists(), st.sampled_from([" ", "\n", "\t", "  \n "]))
def test_parser_tolerates_whitespace_between_tokens(traces, ws):
    text = encode_traces(traces)
    spaced = "".join(ch + ws if ch in ",:()[]" else ch for ch in text)
    assert parse_traces(ws + spaced + ws).traces == traces


def test_encoded_format_is_compact_and_documented_shape():
    traces = [GridTrace(1, [[120, 45], [123, 47]]), GridTrace(4, [[30, 200], [31, 199]])]
    assert encode_traces(traces) == "<trace_start>Mark 1: [(120,45),(123,47)]\nMark 4: [(30,200),(31,199)]<trace_end>"
    t25 = [GridTrace(2, [[5, 6], [7, 8]], [12, 13], [0, 1])]
    assert encode_traces(t25, with_markers=False) == "Mark 2: [(5,6,12,0),(7,8,13,1)]"


def test_expected_dimensions_and_steps():
    two_d = encode_traces([GridTrace(1, [[1, 2], [3, 4]])])
    assert parse_traces(two_d, expect_25d=False).ok
    assert parse_traces(two_d, expect_25d=True).error.code == "wrong_dimensions"
    assert parse_traces(two_d, expect_steps=2).ok
    assert parse_traces(two_d, expect_steps=3).error.code == "inconsistent_lengths"
    t25 = encode_traces([GridTrace(1, [[1, 2]], [3], [1])])
    assert parse_traces(t25, expect_25d=False).error.code == "wrong_dimensions"


def test_text_outside_markers_is_ignored_and_case_of_mark_is_free():
    text = f"Sure, here it is: {TRACE_START} mark 3 : [ (1 , 2) ] {TRACE_END} and more words"
    result = parse_traces(text)
    assert result.ok and result.traces == [GridTrace(3, [[1, 2]])]


def test_missing_end_can_be_accepted_explicitly():
    text = TRACE_START + "Mark 1: [(1,2)]"
    assert parse_traces(text).error.code == "missing_end"
    assert parse_traces(text, require_end=False).traces == [GridTrace(1, [[1, 2]])]


def test_strict_parser_raises_named_exception():
    assert parse_traces_strict("Mark 1: [(1,2)]") == [GridTrace(1, [[1, 2]])]
    with pytest.raises(TraceParseException) as info:
        parse_traces_strict("Mark 1: [(300,2)]")
    assert isinstance(info.value, InvalidInputError)
    assert info.value.error.code == "out_of_range"
    assert "300" in str(info.value)


# --------------------------------------------------------------------------- errors, one by one


@pytest.mark.parametrize(
    "text, code, position",
    [
        ("", "empty", 0),
        ("   \n ", "empty", 0),
        (TRACE_START + TRACE_END, "empty", len(TRACE_START)),
        (TRACE_START, "truncated", len(TRACE_START)),
        ("<trace_st", "truncated", 0),
        ("Mark 1: [(1,2)]<trace_e", "truncated", 15),
        ("Mark 1: [(1,2),(3", "truncated", 17),
        ("Mark 1: [(12", "truncated", 12),
        ("Mar", "truncated", 0),
        (TRACE_START + "Mark 1: [(1,2)]", "missing_end", len(TRACE_START) + 15),
        ("Mark 1: [(1,2)" + TRACE_END, "bad_token", 14),
        ("Mark 1: [(1;2)]", "bad_token", 11),
        ("Sure! Mark 1: [(1,2)]", "bad_token", 0),
        ("Mark 1: [(1,2,3)]", "bad_token", 15),
        ("Mark 1: [(1,2,3,1,5)]", "bad_token", 17),
        ("Mark \u0661: [(1,2)]", "bad_token", 5),  # Arabic-Indic digit one
        ("Mark 1: [\uff081,2)]", "bad_token", 9),  # full-width parenthesis
        ("Mark 1: [(256,2)]", "out_of_range", 10),
        ("Mark 1: [(1,-1)]", "out_of_range", 12),
        ("Mark 1: [(1,2,100,0)]", "out_of_range", 14),
        ("Mark 1: [(1,2,3,2)]", "out_of_range", 16),
        ("Mark -2: [(1,2)]", "out_of_range", 5),
        ("Mark 1: [(1,99999999999)]", "out_of_range", 12),
        ("Mark 1: []", "empty_mark", 9),
        ("Mark 1: [(1,2),(3,4,5,1)]", "mixed_dimensions", 15),
        ("Mark 1: [(1,2)]\nMark 2: [(3,4,5,1)]", "mixed_dimensions", 25),
        ("Mark 1: [(1,2)]\nMark 2: [(1,2),(3,4)]", "inconsistent_lengths", 16),
        ("Mark 1: [(1,2)]\nMark 1: [(3,4)]", "duplicate_mark", 21),
    ],
)
def test_error_codes_and_positions(text, code, position):
    result = parse_traces(text)
    assert_named_error(result)
    assert (result.error.code, result.error.position) == (code, position), result.error


def test_messages_name_the_problem():
    assert "x 256 of Mark 1" in parse_traces("Mark 1: [(256,2)]").error.message
    assert "Mark 1 appears twice" in parse_traces("Mark 1: [(1,2)]Mark 1: [(1,2)]").error.message
    assert "0 (open) or 1 (closed)" in parse_traces("Mark 1: [(1,2,3,2)]").error.message


def test_non_text_and_huge_inputs_are_errors_not_exceptions():
    for value in (None, b"Mark 1: [(1,2)]", 42, ["Mark 1: [(1,2)]"]):
        result = parse_traces(value)
        assert_named_error(result)
        assert result.error.code == "not_text"
    huge = "Mark 1: [" + "(1,2)," * (MAX_INPUT_CHARS // 6)
    assert parse_traces(huge).error.code == "too_long"
    many_steps = "Mark 1: [" + ",".join(["(1,2)"] * 300) + "]"
    assert parse_traces(many_steps).error.code == "too_many_steps"
    many_marks = "\n".join(f"Mark {i}: [(1,2)]" for i in range(70))
    assert parse_traces(many_marks).error.code == "too_many_marks"
    assert parse_traces(many_marks, max_marks=70).ok


def test_truncation_keeps_complete_marks_in_partial():
    traces = [GridTrace(1, [[1, 2], [3, 4]]), GridTrace(2, [[5, 6], [7, 8]])]
    text = encode_traces(traces)
    cut = text[: text.index("Mark 2") + 12]
    result = parse_traces(cut)
    assert result.error.code == "truncated"
    assert result.partial == traces[:1]


def test_bad_options_raise():
    with pytest.raises(InvalidInputError):
        parse_traces("Mark 1: [(1,2)]", grid=0)
    with pytest.raises(InvalidInputError):
        parse_traces("Mark 1: [(1,2)]", expect_steps=0)


# --------------------------------------------------------------------------- fuzzing


@FAST
@given(st.text(max_size=300))
def test_parser_never_raises_on_arbitrary_text(text):
    result = parse_traces(text)
    if not result.ok:
        assert_named_error(result)


FORMAT_ALPHABET = st.sampled_from(list("Mark0123456789:[](),- \n") + [TRACE_START, TRACE_END, "Mark 1: [", "(1,2)", "(3,4,5,1)", "]\n"])


@FAST
@given(st.lists(FORMAT_ALPHABET, max_size=60).map("".join))
def test_parser_never_raises_on_format_like_garbage(text):
    result = parse_traces(text)
    assert isinstance(result, ParseResult)
    if result.ok:
        # whatever it accepted must be a well-formed block that re-encodes to an equivalent parse
        assert parse_traces(encode_traces(result.traces)).traces == result.traces
    else:
        assert_named_error(result)


@FAST
@given(grid_trace_lists(), st.data())
def test_every_proper_prefix_of_marked_output_is_rejected_as_cut(traces, data):
    text = encode_traces(traces, with_markers=True)
    cut = data.draw(st.integers(0, len(text) - 1))
    result = parse_traces(text[:cut])
    assert_named_error(result)
    assert result.error.code in ("empty", "truncated", "missing_end")
    assert result.partial == traces[: len(result.partial)]


@FAST
@given(grid_trace_lists(), st.data())
def test_single_character_corruption_never_raises(traces, data):
    text = encode_traces(traces)
    pos = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.text(min_size=0, max_size=3))
    result = parse_traces(text[:pos] + replacement + text[pos + 1 :])
    if not result.ok:
        assert_named_error(result)


# --------------------------------------------------------------------------- encoder refusals


def test_encoder_refuses_what_the_parser_would_reject():
    with pytest.raises(InvalidInputError, match="no traces"):
        encode_traces([])
    with pytest.raises(InvalidInputError, match="twice"):
        encode_traces([GridTrace(1, [[1, 2]]), GridTrace(1, [[1, 2]])])
    with pytest.raises(InvalidInputError, match="2.5D"):
        encode_traces([GridTrace(1, [[1, 2]]), GridTrace(2, [[1, 2]], [1], [0])])
    with pytest.raises(InvalidInputError, match="same count"):
        encode_traces([GridTrace(1, [[1, 2]]), GridTrace(2, [[1, 2], [3, 4]])])
    with pytest.raises(InvalidInputError, match="grid"):
        encode_traces([GridTrace(1, [[256, 2]])])
    with pytest.raises(InvalidInputError, match="depth bins"):
        encode_traces([GridTrace(1, [[1, 2]], [DEFAULT_N_DEPTH_BINS], [0])])


def test_grid_trace_validates_its_arrays():
    with pytest.raises(InvalidInputError, match="shape"):
        GridTrace(1, [[1, 2, 3]])
    with pytest.raises(InvalidInputError, match="both"):
        GridTrace(1, [[1, 2]], depth_bins=[3])
    with pytest.raises(InvalidInputError, match="gripper"):
        GridTrace(1, [[1, 2]], [3], [2])
    with pytest.raises(InvalidInputError, match="integers"):
        GridTrace(1, [[1.5, 2]])
    assert GridTrace(1, [[1, 2]]) != GridTrace(1, [[1, 3]])
    assert GridTrace(1, [[1, 2]]) != GridTrace(1, [[1, 2]], [0], [0])


# --------------------------------------------------------------------------- depth bins


@FAST
@given(st.floats(0.2, 2.0), st.integers(2, 300), st.sampled_from(["log", "uniform"]))
def test_depth_round_trip_within_half_a_bin(depth, n_bins, spacing):
    codec = DepthBinning(0.2, 2.0, n_bins, spacing)
    b = codec.encode(depth)
    assert 0 <= b < n_bins
    back = codec.decode(b)
    edges = codec.bin_edges()
    assert edges[b] - 1e-9 <= depth <= edges[b + 1] + 1e-9
    # half a bin on the binned axis (log depth for "log")
    axis = np.log if spacing == "log" else (lambda v: v)
    half = (axis(edges[b + 1]) - axis(edges[b])) / 2
    assert abs(axis(back) - axis(depth)) <= half + 1e-9


def test_depth_binning_defaults_clipping_and_errors():
    codec = DepthBinning()
    assert (codec.near, codec.far, codec.n_bins, codec.spacing) == (0.2, 2.0, 100, "log")
    assert codec.encode(0.2) == 0 and codec.encode(2.0) == 99
    assert codec.encode(0.05) == 0 and codec.encode(9.0) == 99
    np.testing.assert_array_equal(codec.encode(np.array([0.1, 1.0, 5.0])), [0, 69, 99])
    assert abs(codec.decode(69) - 1.0) < 0.012  # log bins: about 1.2 cm half width at 1 m
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(InvalidInputError):
            codec.encode(bad)
    with pytest.raises(InvalidInputError):
        codec.decode(100)
    with pytest.raises(InvalidInputError):
        DepthBinning(near=2.0, far=1.0)
    assert DepthBinning.from_dict(codec.to_dict()) == codec


# --------------------------------------------------------------------------- pixels <-> grid


def test_pixel_traces_to_grid_and_back():
    width, height = 640, 480
    trace = Trace(
        7,
        points=[[320.0, 240.0], [330.0, 250.0], [639.9, 0.0]],
        visible=[True, True, False],
        depth=[0.5, 0.6, 1.0],
        gripper=[0.0, 0.6, 1.0],
    )
    codec = DepthBinning()
    grid_2d = grid_traces_from_traces([trace], width, height)
    assert not grid_2d[0].is_25d
    np.testing.assert_array_equal(grid_2d[0].cells, [[128, 128], [132, 133], [255, 0]])
    grid_25 = grid_traces_from_traces([trace], width, height, depth_codec=codec)[0]
    np.testing.assert_array_equal(grid_25.gripper, [0, 1, 1])
    np.testing.assert_array_equal(grid_25.depth_bins, codec.encode(trace.depth))

    back = traces_from_grid_traces([grid_25], width, height, depth_codec=codec)[0]
    assert back.mark_id == 7 and back.visible.all()
    assert np.abs(back.points - trace.points).max() <= max(width, height) / 256  # within one cell
    assert np.abs(np.log(back.depth) - np.log(trace.depth)).max() <= np.log(10) / 100 / 2 + 1e-9
    np.testing.assert_array_equal(back.gripper, [0.0, 1.0, 1.0])
    assert marks_from_grid_traces([grid_25]) == [(7, (128, 128))]


def test_pixel_conversion_errors():
    with pytest.raises(InvalidInputError, match="no depth"):
        grid_traces_from_traces([Trace(1, [[1.0, 2.0]], [True])], 64, 64, depth_codec=DepthBinning())
    with pytest.raises(InvalidInputError, match="NaN"):
        grid_traces_from_traces([Trace(1, [[np.nan, 2.0]], [True])], 64, 64)
    with pytest.raises(InvalidInputError, match="gripper"):
        grid_traces_from_traces([Trace(1, [[1.0, 2.0]], [True], depth=[1.0], gripper=[3.0])], 64, 64, DepthBinning())
    with pytest.raises(InvalidInputError, match="DepthBinning"):
        traces_from_grid_traces([GridTrace(1, [[1, 2]], [3], [0])], 64, 64)
    with pytest.raises(InvalidInputError, match="image size"):
        grid_traces_from_traces([], 0, 64)


# --------------------------------------------------------------------------- Set-of-Mark text


def test_encode_marks_lines():
    assert encode_marks([(1, (120, 45)), (3, (0, 255))]) == "Mark 1 at [120,45]\nMark 3 at [0,255]"
    for bad in ([], [(1, (256, 0))], [(1, (1, 1)), (1, (2, 2))], [("a", (1, 1))], [(1, 2)]):
        with pytest.raises(InvalidInputError):
            encode_marks(bad)


@pytest.mark.parametrize(
    "answer, ids",
    [
        ("Mark 3", [3]),
        ("3", [3]),
        (" 3. ", [3]),
        ("Marks 2 and 5", [2, 5]),
        ("Marks 1, 2 and 5.", [1, 2, 5]),
        ("mark #4", [4]),
        ("Mark 3 or Mark 4", [3, 4]),
        ("The object is Mark 3 at [120,45].", [3]),
        ("2, 5", [2, 5]),
        ("Mark 3, Mark 3", [3]),
        ("no idea", []),
        ("the cube at [120,45]", []),
        ("", []),
        ("Mark \u0663", []),
    ],
)
def test_parse_mark_ids(answer, ids):
    assert parse_mark_ids(answer) == ids


def test_parse_mark_ids_filters_and_never_raises():
    assert parse_mark_ids("Marks 2 and 9", valid_ids=[1, 2, 3]) == [2]
    assert parse_mark_ids(None) == []
    assert parse_mark_ids("Mark 1 " * 1000) == []


@FAST
@given(st.text(max_size=200))
def test_parse_mark_ids_never_raises(text):
    ids = parse_mark_ids(text)
    assert all(isinstance(i, int) and i >= 0 for i in ids)
    assert len(ids) == len(set(ids))
