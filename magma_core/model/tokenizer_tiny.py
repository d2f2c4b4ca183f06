"""The magma-tiny tokenizer: a byte-level BPE trained locally on the prompts and answers this project writes.

Layout (fixed, so `MagmaConfig.magma_tiny()` can name the ids without loading anything):

    0 <pad>   1 <s> (bos)   2 </s> (eos)   3 <image>   4 <trace_start>   5 <trace_end>
    6 .. 1023     byte-level BPE: the 256 byte symbols and merges learned from the corpus
                  (``<reserved_k>`` fills the ids the corpus could not: spare ids for later tokens)
    1024 .. 1279  the 256 action tokens ``<act_000>`` .. ``<act_255>`` (the ActionTokenizer's range)

Numbers are pre-split into runs of at most three digits (as Llama-3 does), so each grid
coordinate 0..255 becomes one or a few tokens and a model reads a number the same way every time.
The corpus is generated from `magma_core.prompts` with a fixed seed: the same call always gives
the same tokenizer.
"""
from __future__ import annotations

import random

import numpy as np

from magma_core.codecs.action_tokenizer import DEFAULT_N_BINS
from magma_core.codecs.trace_text import TRACE_END, TRACE_START, GridTrace
from magma_core.errors import InvalidInputError
from magma_core.prompts import (
    DEFAULT_TEMPLATES,
    IMAGE_TOKEN,
    action_prompt,
    grounding_answer,
    grounding_prompt,
    trace_answer,
    trace_prompt,
)

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, TRACE_START, TRACE_END)
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID, TRACE_START_ID, TRACE_END_ID = range(len(SPECIAL_TOKENS))
TINY_VOCAB_SIZE = 1280
ACTION_TOKEN_FORMAT = "<act_{:03d}>"
MODEL_MAX_LENGTH = 1024

# Words of tabletop manipulation instructions (LIBERO, Bridge, this project's simulated tasks).
_VERBS = ("put", "place", "move", "push", "pick up", "lift", "stack", "open", "close", "turn on", "turn off",
          "slide", "drop", "grasp", "take", "flip", "wipe", "pour", "insert", "rotate")
_COLORS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown", "gray", "wooden")
_OBJECTS = ("cube", "block", "bowl", "plate", "mug", "cup", "spoon", "fork", "knife", "bottle", "can", "sponge",
            "towel", "pot", "pan", "lid", "drawer", "cabinet", "microwave", "stove", "basket", "box", "tray", "pad",
            "carrot", "banana", "apple", "eggplant", "corn", "ketchup", "book", "caddy", "faucet", "door", "ball")
_PLACES = ("on", "in", "into", "onto", "next to", "behind", "in front of", "left of", "right of", "on top of", "under")
_EXTRA = ("the", "a", "of", "and", "then", "table", "shelf", "sink", "counter", "top", "bottom", "left", "right",
          "middle", "front", "back", "side", "robot", "gripper", "arm", "object", "target", "goal")


def action_token(index: int) -> str:
    """Text of the action token for bin `index` (0..255)."""
    return ACTION_TOKEN_FORMAT.format(index)


def build_corpus(n_samples: int = 1500, seed: int = 0) -> list[str]:
    """Prompts and answers of every kind, as the model will read and write them (special tokens removed)."""
    rng = random.Random(seed)
    texts = [" ".join(str(i) for i in range(256)), " ".join(_VERBS + _COLORS + _OBJECTS + _PLACES + _EXTRA)]
    for index in range(n_samples):
        instruction = _random_instruction(rng)
        marks = _random_marks(rng)
        kind = index % 3
        if kind == 0:
            texts.append(grounding_prompt(instruction, marks, variant=rng.randrange(len(DEFAULT_TEMPLATES.grounding))))
            texts.append(grounding_answer(rng.sample([m for m, _ in marks], k=rng.randint(1, min(3, len(marks))))))
        elif kind == 1:
            n_steps = rng.randint(1, 8)
            with_depth = rng.random() < 0.5
            variant = rng.randrange(len(DEFAULT_TEMPLATES.trace))
            texts.append(trace_prompt(instruction, marks, n_steps, with_depth=with_depth, variant=variant))
            texts.append(trace_answer(_random_traces(rng, marks, n_steps + 1, with_depth)))
        else:
            # Action answers are token ids, not text; their prompts still teach the words around them.
            texts.append(action_prompt(instruction, variant=rng.randrange(len(DEFAULT_TEMPLATES.action))))
    return [_strip_special(text) for text in texts]


def train_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE, n_samples: int = 1500, seed: int = 0, extra_texts=()):
    """Train the byte-level BPE and wrap it as a transformers fast tokenizer of exactly `vocab_size` ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    n_text = vocab_size - DEFAULT_N_BINS
    if n_text < len(SPECIAL_TOKENS) + 256:
        raise InvalidInputError(f"vocab_size {vocab_size} leaves no room for bytes and merges before the {DEFAULT_N_BINS} action tokens")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_text,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = build_corpus(n_samples, seed) + [_strip_special(str(t)) for t in extra_texts]
    tokenizer.train_from_iterator(corpus, trainer)
    missing = n_text - tokenizer.get_vocab_size()
    if missing > 0:  # a small corpus may not support enough merges; keep the action ids where they belong
        tokenizer.add_special_tokens([f"<reserved_{i}>" for i in range(missing)])
    tokenizer.add_special_tokens([action_token(i) for i in range(DEFAULT_N_BINS)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )
    check_tiny_layout(wrapped)
    return wrapped


def check_tiny_layout(tokenizer) -> None:
    """Raise if `tokenizer` does not have the fixed magma-tiny layout (special ids, action tokens last)."""
    vocab = len(tokenizer)
    for expected, token in enumerate(SPECIAL_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected:
            raise InvalidInputError(f"tokenizer maps {token} to {got}, the magma-tiny layout needs {expected}")
    first = vocab - DEFAULT_N_BINS
    for index in (0, DEFAULT_N_BINS - 1):
        got = tokenizer.convert_tokens_to_ids(action_token(index))
        if got != first + index:
            raise InvalidInputError(f"action token {action_token(index)} has id {got}, expected {first + index} (the last {DEFAULT_N_BINS} ids)")


def _random_instruction(rng: random.Random) -> str:
    verb = rng.choice(_VERBS)
    thing = f"the {rng.choice(_COLORS)} {rng.choice(_OBJECTS)}" if rng.random() < 0.7 else f"the {rng.choice(_OBJECTS)}"
    if rng.random() < 0.6:
        target = f"the {rng.choice(_COLORS)} {rng.choice(_OBJECTS)}" if rng.random() < 0.5 else f"the {rng.choice(_OBJECTS)}"
        text = f"{verb} {thing} {rng.choice(_PLACES)} {target}"
    else:
        text = f"{verb} {thing}"
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def _random_marks(rng: random.Random) -> list[tuple[int, tuple[int, int]]]:
    ids = rng.sample(range(1, 13), k=rng.randint(1, 5))
    return [(i, (rng.randrange(256), rng.randrange(256))) for i in ids]


def _random_traces(rng: random.Random, marks, length: int, with_depth: bool) -> list[GridTrace]:
    traces = []
    for mark_id, (x, y) in marks[: rng.randint(1, len(marks))]:
        cells = [(x, y)]
        for _ in range(length - 1):
            x = min(255, max(0, x + rng.randint(-12, 12)))
            y = min(255, max(0, y + rng.randint(-12, 12)))
            cells.append((x, y))
        if with_depth:
            depth = [rng.randrange(100) for _ in range(length)]
            gripper = [rng.randint(0, 1) for _ in range(length)]
            traces.append(GridTrace(mark_id, np.array(cells), np.array(depth), np.array(gripper)))
        else:
            traces.append(GridTrace(mark_id, np.array(cells)))
    return traces


def _strip_special(text: str) -> str:
    # BPE training does not see added tokens as atoms; keep their pieces out of the merges.
    for token in SPECIAL_TOKENS:
        text = text.replace(token, " ")
    return text


__all__ = [
    "SPECIAL_TOKENS",
    "TINY_VOCAB_SIZE",
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "IMAGE_ID",
    "TRACE_START_ID",
    "TRACE_END_ID",
    "action_token",
    "build_corpus",
    "train_tiny_tokenizer",
    "check_tiny_layout",
]
