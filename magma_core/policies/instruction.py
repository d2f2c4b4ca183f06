"""Read a tabletop instruction ("put the red cube on the green pad") and ground it on proposed marks.

The parser knows a small vocabulary: colour words (see `magma_core.colors`), nouns for movable
things (cube, block, ...), containers (tray, bin, box, ...) and flat places (pad, zone, ...), and
verbs that select the skill (push/slide push; stack stacks). The first noun phrase is the object
to move, the last one (after it) the place. Grounding scores each proposed mark by how far its
colour is from the named colour and whether its shape fits the noun.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from magma_core.colors import COLOR_RGB, canonical_color, color_distance
from magma_core.errors import InvalidInputError
from magma_core.som.propose import MarkInfo, ProposedMarks

# noun -> shape a proposal gives such a thing (see magma_core.som.propose.MarkInfo.shape)
NOUN_SHAPES: dict[str, str] = {
    "cube": "block", "cubes": "block", "block": "block", "blocks": "block", "brick": "block", "object": "block",
    "tray": "container", "bin": "container", "box": "container", "basket": "container", "container": "container",
    "bowl": "container",
    "pad": "flat", "mat": "flat", "square": "flat", "zone": "flat", "area": "flat", "region": "flat",
    "spot": "flat", "target": "flat", "patch": "flat", "circle": "flat",
}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "big": "large", "large": "large"}
PUSH_VERBS = ("push", "slide", "shove", "nudge")
SKILLS = ("pick_place", "stack", "put_in", "push", "pick")
_WORD = re.compile(r"[a-z]+")
MAX_INSTRUCTION_CHARS = 1000
# A mark whose colour is farther than this from the named one is not that colour (see magma_core.colors).
MAX_COLOR_DISTANCE = 0.3


@dataclass(frozen=True)
class Query:
    """One noun phrase: colour (palette name or None), shape (block/container/flat or None), size hint."""

    color: str | None
    shape: str | None
    size: str | None = None
    text: str = ""


@dataclass(frozen=True)
class ParsedInstruction:
    skill: str  # one of SKILLS
    object: Query
    place: Query | None


def parse_instruction(text: str) -> ParsedInstruction:
    """Split an instruction into the object to move, the place and the skill; InvalidInputError if no object is named."""
    if not isinstance(text, str):
        raise InvalidInputError(f"instruction must be text, got {type(text).__name__}")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InvalidInputError(f"instruction has {len(text)} characters; at most {MAX_INSTRUCTION_CHARS}")
    words = _WORD.findall(text.lower())
    phrases = _noun_phrases(words)
    if not phrases:
        raise InvalidInputError(f"instruction {text!r} names no object this policy knows (a colour or a noun such as cube, pad, tray)")
    obj, place = phrases[0], (phrases[-1] if len(phrases) > 1 else None)
    if obj.shape is None:
        obj = Query(obj.color, "block", obj.size, obj.text)
    if any(w in PUSH_VERBS for w in words):
        skill = "push"
    elif place is None:
        skill = "pick"
    elif "stack" in words or place.shape == "block" or _has_on_top(words):
        skill = "stack"
    elif place.shape == "container":
        skill = "put_in"
    else:
        skill = "pick_place"
    return ParsedInstruction(skill=skill, object=obj, place=place)


def _has_on_top(words: list[str]) -> bool:
    return any(words[i:i + 3] == ["on", "top", "of"] for i in range(len(words) - 2))


def _noun_phrases(words: list[str]) -> list[Query]:
    """Phrases [size] [colour] [size] noun, or a colour standing alone before a non-noun ("the red one")."""
    out: list[Query] = []
    color = size = None
    start = 0
    for i, w in enumerate(words):
        name = canonical_color(w)
        if name is not None:
            if color is not None:  # "red ... blue": the first colour had no noun
                out.append(Query(color, None, size, " ".join(words[start:i])))
                size = None
            color, start = name, (start if size else i)
            continue
        if w in SIZE_WORDS:
            size, start = SIZE_WORDS[w], (start if color else i)
            continue
        if w in NOUN_SHAPES:
            out.append(Query(color, NOUN_SHAPES[w], size, " ".join(words[(start if (color or size) else i):i + 1])))
            color = size = None
            continue
        if color is not None and w not in ("one", "colored", "coloured"):
            out.append(Query(color, None, size, words[start]))
            color = size = None
    if color is not None:
        out.append(Query(color, None, size, words[start]))
    return out


def _shape_ok(query: Query, info: MarkInfo) -> bool:
    if query.shape is None or info.shape == "unknown":
        return True
    return info.shape == query.shape


def ground(query: Query, proposal: ProposedMarks, near: np.ndarray | None = None,
           exclude: tuple[int, ...] = ()) -> MarkInfo | None:
    """The proposed mark that best fits `query`, or None. `near` (base xy) breaks ties toward a remembered place."""
    best, best_score = None, np.inf
    candidates = [i for i in proposal.info.values() if i.kind != "gripper" and i.mark_id not in exclude]
    sizes = [max(i.size) for i in candidates if _shape_ok(query, i)]
    for info in candidates:
        if not _shape_ok(query, info):
            continue
        score = 0.0
        if query.color is not None:
            reference = np.array(COLOR_RGB[query.color])
            dist = float(color_distance(np.array(info.color_rgb, dtype=np.uint8), (reference * 255).astype(np.uint8)))
            if info.color_name != query.color and dist > MAX_COLOR_DISTANCE:
                continue
            score += 0.0 if info.color_name == query.color else dist
        if query.size is not None and len(sizes) > 1:
            rank = max(info.size) - (min(sizes) if query.size == "small" else max(sizes))
            score += abs(rank) * 5.0
        if near is not None:
            score += 0.5 * float(np.linalg.norm(info.position[:2] - np.asarray(near)[:2]))
        if score < best_score:
            best, best_score = info, score
    return best
