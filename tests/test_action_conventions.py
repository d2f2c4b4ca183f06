"""Action-token conventions: this project's magma-tiny layout and Magma-8B's (OpenVLA's) layout."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from magma_core.codecs.action_conventions import (
    BASE_VOCAB_END,
    LINSPACE_DIGITIZE,
    MAGMA_8B,
    MAGMA_TINY,
    ActionTokenConvention,
    MaskedQ99Stats,
    convention_by_name,
    convention_for_config,
    magma_8b_convention,
    magma_tiny_convention,
)
from magma_core.codecs.action_tokenizer import ActionNormStats, ActionTokenizer
from magma_core.errors import InvalidInputError

RNG = np.random.default_rng(7)
TINY = magma_tiny_convention(1280)
BIG = magma_8b_convention()  # Llama-3's tokenizer.vocab_size, 128000


class FakeTokenizer:
    """The two sizes a Hugging Face tokenizer reports: vocab_size (no added tokens) and len() (all)."""

    def __init__(self, vocab_size: int, total: int):
        self.vocab_size, self._total = vocab_size, total

    def __len__(self) -> int:
        return self._total


def _normalised_samples(n: int = 5000) -> np.ndarray:
    inside = RNG.uniform(-1.0, 1.0, n)
    return np.concatenate([inside, [-1.0, 1.0, 0.0]])


# ---------------------------------------------------------------------- magma-tiny == ActionTokenizer


@pytest.mark.parametrize("vocab", [1280, 32_000])
def test_tiny_preset_reproduces_action_tokenizer_bit_for_bit(vocab):
    q01 = RNG.uniform(-0.5, 0.0, 7)
    stats = ActionNormStats(q01=q01, q99=q01 + RNG.uniform(0.01, 1.0, 7))
    reference = ActionTokenizer(vocab, stats)
    convention = magma_tiny_convention(vocab)
    actions = RNG.uniform(-1.5, 1.5, (400, 7))  # beyond [q01, q99] too: clipping must agree
    ids = convention.encode(stats.normalize(actions))
    np.testing.assert_array_equal(ids, reference.encode(actions))
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(stats.unnormalize(convention.decode(ids)), reference.decode(ids))
    assert convention.id_range == reference.action_id_range


def test_tiny_preset_hand_computed_ids():
    # bin i = floor((x + 1) / (2 / 256)) -> id 1280 - 256 + i
    np.testing.assert_array_equal(TINY.encode([-1.0, -0.999, 0.0, 0.999, 1.0, 5.0]), [1024, 1024, 1152, 1279, 1279, 1279])
    np.testing.assert_allclose(TINY.decode([1024, 1152, 1279]), [-1 + 1 / 256, 1 / 256, 1 - 1 / 256])


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("convention", [TINY, BIG], ids=[MAGMA_TINY, MAGMA_8B])
def test_round_trip_within_half_a_bin(convention):
    values = _normalised_samples()
    ids = convention.encode(values)
    assert convention.is_action_token(ids).all()
    back = convention.decode(ids)
    assert np.abs(back - values).max() <= convention.bin_width / 2 + 1e-12
    again = convention.encode(back)
    # A bin centre re-encodes to its own id, except Magma-8B's top id (only x == 1.0), which shares the last centre.
    top = ids == convention.first_id if convention.reversed else np.zeros_like(ids, dtype=bool)
    np.testing.assert_array_equal(again[~top], ids[~top])


def test_bin_widths_of_the_two_rules():
    assert TINY.bin_width == pytest.approx(2 / 256)
    assert BIG.bin_width == pytest.approx(2 / 255)  # 256 linspace edges, 255 intervals


# ---------------------------------------------------------------------- magma-8b, by hand


def test_magma_8b_ids_follow_openvla_rule_by_hand():
    # Rule from openvla/openvla prismatic/vla/action_tokenizer.py, used unchanged by microsoft/Magma
    # (data/openx/datasets/datasets.py builds ActionTokenizer(tokenizer); the agents in
    # tools/simplerenv-magma/.../magma_model.py and agents/libero/libero_magma_utils.py invert it):
    # edges e_k = -1 + 2k/255 (k = 0..255), d = digitize(clip(x, -1, 1)) = 1 + max{k: e_k <= x}, id = 128000 - d.
    cases = {
        -1.0: 128000 - 1,  # e_0 <= x < e_1
        -0.5: 128000 - 64,  # max k with -1 + 2k/255 <= -0.5 is 63
        0.0: 128000 - 128,  # e_127 = -1/255 <= 0 < e_128 = 1/255
        0.5: 128000 - 192,  # k <= 191.25
        0.9999: 128000 - 255,  # between e_254 and e_255
        1.0: 128000 - 256,  # x == e_255: digitize returns 256, the only value that does
        3.0: 128000 - 256,  # clipped to 1.0
        -7.0: 128000 - 1,  # clipped to -1.0
    }
    np.testing.assert_array_equal(BIG.encode(list(cases)), list(cases.values()))
    assert BIG.id_range == (127744, 128000)  # below Llama-3's special tokens (128000..128255) and Magma's own


def test_magma_8b_decodes_to_interval_centres_by_hand():
    # centre index = min(d - 1, 254) with d = 128000 - id; centre_j = -1 + (2j + 1) / 255
    ids = [127999, 127872, 127745, 127744, 127857]
    expected = [-1 + 1 / 255, 0.0, 1 - 1 / 255, 1 - 1 / 255, -1 + 285 / 255]
    np.testing.assert_allclose(BIG.decode(ids), expected, atol=1e-12)


def test_magma_8b_reads_ids_the_released_checkpoint_generated():
    # Seven action ids Magma-8B wrote in SimplerEnv (microsoft/Magma issue #36); the last is the
    # gripper, left unnormalised by Magma, at 1.0 (open): 128000 - 256.
    generated = np.array([127857, 127873, 127868, 127904, 127861, 127874, 127744])
    decoded = BIG.decode(generated)
    assert (np.abs(decoded) <= 1).all()
    assert decoded[-1] == pytest.approx(1 - 1 / 255)
    np.testing.assert_array_equal(BIG.encode(np.array([0.0, 1.0])), [127872, 127744])  # closed, open


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "convention, bad",
    [(TINY, 1023), (TINY, 1280), (TINY, -1), (BIG, 127743), (BIG, 128000), (BIG, 128256), (BIG, 128260)],
)
def test_ids_out_of_range_raise(convention, bad):
    with pytest.raises(InvalidInputError, match="not .* action tokens"):
        convention.decode(np.array([convention.first_id, bad]))


@pytest.mark.parametrize("convention", [TINY, BIG], ids=[MAGMA_TINY, MAGMA_8B])
def test_non_integer_ids_and_non_finite_values_raise(convention):
    with pytest.raises(InvalidInputError, match="integers"):
        convention.decode(np.array([float(convention.first_id)]))
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        convention.encode([0.0, np.nan])
    with pytest.raises(InvalidInputError, match="numeric"):
        convention.encode(["left"])


def test_invalid_conventions_raise():
    with pytest.raises(InvalidInputError, match="n_bins"):
        ActionTokenConvention("x", 1, BASE_VOCAB_END, 100, True, LINSPACE_DIGITIZE)
    with pytest.raises(InvalidInputError, match="end_id"):
        ActionTokenConvention("x", 256, BASE_VOCAB_END, 100, True, LINSPACE_DIGITIZE)
    with pytest.raises(InvalidInputError, match="bin_rule"):
        ActionTokenConvention("x", 256, BASE_VOCAB_END, 1000, True, "quantile")
    with pytest.raises(InvalidInputError, match="unknown action token convention"):
        convention_by_name("magma-70b")
    with pytest.raises(InvalidInputError, match="vocabulary size"):
        convention_by_name(MAGMA_TINY)
    assert convention_by_name(MAGMA_8B) == BIG and convention_by_name(MAGMA_TINY, 1280) == TINY


# ---------------------------------------------------------------------- picking the convention


def _config(backbone: str, vocab: int):
    return SimpleNamespace(vision_backbone=backbone, text_config=SimpleNamespace(vocab_size=vocab))


def test_config_of_the_8b_preset_or_official_json_picks_magma_8b():
    assert convention_for_config(_config("convnextxxlarge", 128261)) == BIG  # MagmaConfig.magma_8b()
    official = {"vision_config": {"vision_backbone": "convnextxxlarge", "mm_projector_type": "mlp2x_gelu"}, "vocab_size": 128261}
    assert convention_for_config(official) == BIG
    # With the checkpoint's tokenizer the block ends at its vocab_size (added tokens excluded), not len().
    assert convention_for_config(official, FakeTokenizer(128000, 128261)).id_range == (127744, 128000)


def test_other_configs_pick_magma_tiny_at_the_end_of_the_whole_vocabulary():
    assert convention_for_config(_config("convnext-tiny-magma", 1280)) == TINY
    as_dict = {"vision_backbone": "convnext-tiny-magma", "vision_config": {"depths": [2, 2, 2]}, "text_config": {"vocab_size": 1280}}
    assert convention_for_config(as_dict) == TINY
    assert convention_for_config(_config("my-backbone", 5000), FakeTokenizer(4990, 5000)).id_range == (4744, 5000)


def test_config_mismatches_raise():
    with pytest.raises(InvalidInputError, match="tokenizer has 1279 tokens"):
        convention_for_config(_config("convnext-tiny-magma", 1280), FakeTokenizer(1200, 1279))
    with pytest.raises(InvalidInputError, match="base vocabulary"):
        convention_for_config({"vision_config": {"vision_backbone": "convnextbase"}, "text_config": {"vocab_size": 2000}})
    with pytest.raises(InvalidInputError, match="no vocab_size"):
        convention_for_config(SimpleNamespace(vision_backbone="convnextxxlarge"))


# ---------------------------------------------------------------------- Magma-8B's normalisation


STATS_8B = MaskedQ99Stats(
    q01=[-0.02, -0.04, -0.03, -0.1, -0.1, -0.2, 0.0],
    q99=[0.02, 0.04, 0.05, 0.1, 0.1, 0.2, 1.0],
    mask=[True] * 6 + [False],
)


def test_masked_q99_normalisation_by_hand():
    raw = np.array([[0.0, 0.04, -0.03, 0.5, -0.05, 0.1, 1.0], [0.01, -0.04, 0.01, -0.5, 0.0, 0.0, 0.0]])
    expected = np.array([[0.0, 1.0, -1.0, 1.0, -0.5, 0.5, 1.0], [0.5, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(STATS_8B.normalize(raw), expected, atol=1e-6)  # the 1e-8 in the span
    # The gripper (mask False) passes through raw, so open (1) and closed (0) land on 127744 and 127872.
    np.testing.assert_array_equal(BIG.encode(STATS_8B.normalize(raw))[:, 6], [127744, 127872])
    inside = STATS_8B.q01 + RNG.uniform(0, 1, (50, 7)) * (STATS_8B.q99 - STATS_8B.q01)
    inside[:, 6] = RNG.integers(0, 2, 50)
    np.testing.assert_allclose(STATS_8B.unnormalize(STATS_8B.normalize(inside)), inside, atol=1e-7)


def test_masked_q99_from_statistics_json_and_constant_dimensions():
    entry = {"action": {"q01": [0.0, -1.0], "q99": [0.0, 1.0], "min": [0.0, -2.0], "max": [0.0, 2.0], "mask": [True, True]}}
    stats = MaskedQ99Stats.from_dict(entry)
    np.testing.assert_allclose(stats.normalize([[0.3, 0.5]]), [[0.0, 0.5]])  # min == max -> 0
    assert MaskedQ99Stats.from_dict({"q01": [0.0], "q99": [1.0]}).mask.tolist() == [True]  # Magma's default
    with pytest.raises(InvalidInputError, match="lack q99"):
        MaskedQ99Stats.from_dict({"q01": [0.0]})
    with pytest.raises(InvalidInputError, match="mask"):
        MaskedQ99Stats([0.0, 0.0], [1.0, 1.0], mask=[1, 0])
    with pytest.raises(InvalidInputError, match=r"shape \(\.\.\., 7\)"):
        STATS_8B.normalize(np.zeros(6))


def test_action_tokenizer_and_processor_follow_the_magma_8b_convention():
    """Wired in: an ActionTokenizer with the 8B convention writes ids in [127744, 128000) and reads them back."""
    from magma_core.codecs.action_conventions import MaskedQ99Stats, magma_8b_convention
    from magma_core.codecs.action_tokenizer import ActionTokenizer

    stats = MaskedQ99Stats(q01=[-0.05] * 6 + [0.0], q99=[0.05] * 6 + [1.0], mask=[True] * 6 + [False])
    tokenizer = ActionTokenizer(128261, stats, convention=magma_8b_convention())
    actions = np.array([[0.0, 0.025, -0.025, 0.0, 0.0, 0.0, 1.0]])
    ids = tokenizer.encode(actions)
    assert tokenizer.action_id_range == (127744, 128000)
    assert ids[0, 0] == 127872 and ids[0, 6] == 127744  # 0 -> the middle bin; gripper 1 (open) raw -> the last bin
    assert np.all(tokenizer.is_action_token(ids))
    assert np.allclose(tokenizer.decode(ids), actions, atol=1.5 / 255)  # half a bin; the last id reads back as 1 - 1/255
