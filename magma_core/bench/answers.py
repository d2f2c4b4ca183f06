"""Teacher-forced answer accuracy of a checkpoint on a training config's examples, per objective and field.

Closed-loop success needs minutes of simulation per episode; this reads a checkpoint's skills in
seconds. Each example of the config's mixture (one objective at a time, from a stream position
training never reached by default) is fed with its true answer, and the argmax after every answer
prefix is compared with the next true token. Number tokens are grouped by what they say:

- ``mark`` the mark numbers an answer names (a trace's ``Mark k``, a grounding or refer answer);
- ``first`` the first step of a trace (x, y, depth; for a goal-first answer pinned at run time);
- ``later`` the following steps' x, y, depth (for a trace: where the mark goes);
- ``gripper`` the open/close flags.

A trace answer's groups are split by whose trace it is: ``hand`` (mark 1) or ``goal`` (the other mark);
``goal header`` counts every token of a goal line ("Goal: red block 4cm") that opens the answer, and
``goal ranked`` whether the true goal line scores highest among the listed marks' lines (the run-time choice).
``exact`` is the fraction of answers with every token right.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from magma_core.errors import InvalidInputError
from magma_core.prompts import GOAL_HEADER_PREFIX

OBJECTIVES = ("trace", "grounding", "locate", "refer", "goal")
_FIELDS = ("x", "y", "depth", "gripper")


@dataclass
class _Tally:
    right: int = 0
    total: int = 0

    def add(self, ok: bool) -> None:
        self.right += int(ok)
        self.total += 1

    def rate(self) -> float | None:
        return self.right / self.total if self.total else None


def answer_accuracy(checkpoint: str, config_path: str, objectives=OBJECTIVES, examples: int = 32,
                    start_index: int = 10_000_000, progress: bool = False) -> dict:
    """Teacher-forced accuracy per objective: {objective: {examples, exact, groups: {name: rate}, counts}}."""
    import torch

    from magma_core.model import MagmaForConditionalGeneration, MagmaProcessor
    from magma_core.model.constrained import token_texts
    from magma_core.training.config import load_config
    from magma_core.training.mixture import TrainingMixture, load_source

    if examples < 1:
        raise InvalidInputError(f"examples must be >= 1, got {examples}")
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown or not objectives:
        raise InvalidInputError(f"objectives must be some of {OBJECTIVES}, got {list(objectives)}")
    model = MagmaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = MagmaProcessor.from_pretrained(checkpoint)
    base = load_config(config_path)
    texts = [text or "" for text in token_texts(processor.tokenizer)]  # special tokens: no text
    sources = [load_source(spec.path, spec.weight, spec.stride) for spec in base.datasets]  # read once, for every objective
    report = {}
    for objective in objectives:
        try:
            config = base.replace(objectives={objective: 1.0}, color_jitter=0.0, max_shift_px=0)
            mixture = TrainingMixture(sources, config, processor.vocab_size, depth_binning=config.make_depth_binning())
        except InvalidInputError as exc:
            report[objective] = {"error": str(exc)}
            continue
        groups: dict[str, _Tally] = {}
        exact = _Tally()
        seen = 0
        index = start_index
        iterator = range(examples)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc=objective, unit="example")
        for _ in iterator:
            item = mixture.item(index)
            index += 1
            if item.objective != objective or item.answer is None:
                continue  # a frame that cannot have this objective fell back to another one
            if objective in ("trace", "goal") and item.answer.startswith(GOAL_HEADER_PREFIX):
                groups.setdefault("goal ranked", _Tally()).add(_goal_ranked_first(model, processor, item))
            example = processor.build_example(item.image, item.prompt, answer=item.answer)
            batch = processor.collate([example], padding_side="right")
            with torch.inference_mode():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
            labels = batch["labels"][0]
            positions = (labels != -100).nonzero().flatten().tolist()
            truth = [int(labels[p]) for p in positions]
            guess = [int(logits[p - 1].argmax()) for p in positions]
            exact.add(truth == guess)
            for name, ok in _classify(objective, [texts[t] for t in truth], [a == b for a, b in zip(truth, guess)]):
                groups.setdefault(name, _Tally()).add(ok)
            seen += 1
        report[objective] = {
            "examples": seen,
            "exact": exact.rate(),
            "groups": {name: round(t.rate(), 4) for name, t in sorted(groups.items())},
            "counts": {name: [t.right, t.total] for name, t in sorted(groups.items())},
        }
    return report


_MARK_LINE = re.compile(r"^Mark (\d+): \[\([\d,]+\)\] (.+)$")


def _goal_ranked_first(model, processor, item) -> bool:
    """Whether the true goal line scores highest among the goal lines of every listed non-gripper mark (what
    `MagmaPolicy` ranks at run time)."""
    from magma_core.model.generation import goal_line_scores

    truth = item.answer[len(GOAL_HEADER_PREFIX):].split("\n", 1)[0]
    texts = [m[2] for line in item.prompt.splitlines() if (m := _MARK_LINE.match(line)) and m[1] != "1"]
    if truth not in texts:
        return False
    scores = goal_line_scores(model, processor, processor([item.image], [item.prompt]), texts)[0]
    return texts[max(range(len(texts)), key=scores.__getitem__)] == truth


def _classify(objective: str, pieces: list[str], correct: list[bool]):
    """(group name, right?) for every number token of one answer, given its token texts in order."""
    owner, step, field, after_mark = "", -1, 0, False
    id_list = objective in ("grounding", "refer")
    header = objective in ("trace", "goal")  # a goal line ("Goal: red block 4cm") may come before the first mark
    for piece, ok in zip(pieces, correct):
        text = piece.strip()
        if header and text not in ("Mark", "Marks"):
            if text and not (text.startswith("<") and text.endswith(">")):  # a marker token is not a header word
                yield "goal header", ok
            continue
        header = False
        if text in ("Mark", "Marks"):
            step, after_mark = -1, True
            continue
        if "(" in piece:
            step, field = step + 1, 0
        if not re.fullmatch(r"\d+", text or "x"):
            continue
        if id_list or after_mark:
            after_mark = False
            if objective == "trace":  # a trace answer's traces: the hand's (mark 1) or the goal's
                owner = "hand " if text == "1" else "goal "
            yield owner + "mark", ok
            continue
        name = _FIELDS[min(field, 3)]
        field += 1
        yield owner + ("gripper" if name == "gripper" else ("first" if step <= 0 else "later")), ok


def format_report(report: dict) -> str:
    lines = []
    for objective, result in report.items():
        if "error" in result:
            lines.append(f"{objective}: {result['error']}")
            continue
        groups = ", ".join(f"{name} {rate:.2f}" for name, rate in result["groups"].items())
        exact = "-" if result["exact"] is None else f"{result['exact']:.2f}"
        lines.append(f"{objective:9s} {result['examples']:3d} examples  exact {exact}  {groups}")
    return "\n".join(lines)


__all__ = ["OBJECTIVES", "answer_accuracy", "format_report"]
