"""`MagmaPolicy`: a trained Magma checkpoint behind the `Policy` contract.

Trace mode (default): marks are proposed from the observation (`propose_marks`: the gripper is
mark 1, objects and regions follow), drawn on the image and listed in the Trace-of-Mark prompt;
the model writes a 2.5D trace under the trace grammar (only the proposed mark ids, exactly
``trace_steps + 1`` steps, depth bins and gripper bits), which is decoded to pixel traces with
depth in metres and a gripper state, the gripper's trace first. The output dict has the layout
of `HeuristicPolicy`'s. Action mode: the model writes 7 action tokens, decoded with the
training data's q01/q99 into an end-effector delta and gripper command.

A checkpoint folder written by the trainer holds ``policy.json`` (naming this class, for
``magma eval --policy DIR``) and ``magma_policy.json`` (mode, trace length, depth binning,
action statistics) beside the model's and processor's files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from magma_core.codecs.action_tokenizer import ActionNormStats, ActionTokenizer
from magma_core.codecs.trace_text import DepthBinning, encode_traces, traces_from_grid_traces
from magma_core.errors import InvalidInputError
from magma_core.policies.goal_belief import GoalBelief
from magma_core.prompts import action_prompt, trace_prompt
from magma_core.som.describe import describe_proposal, listed_positions, marks_text
from magma_core.som.draw import draw_marks
from magma_core.som.propose import GRIPPER_MARK_ID, ProposalConfig, propose_marks
from magma_core.training.config import TRACE_ORDERS
from magma_core.training.samples_builder import prompt_marks

POLICY_FILE = "policy.json"
POLICY_CONFIG_FILE = "magma_policy.json"
POLICY_CLASS = "magma_core.training.policy:MagmaPolicy"
MODES = ("trace", "action")
TOKENS_PER_STEP = 16  # generous: "(123,45,67,1)," is at most 14 characters


def write_policy_files(directory: str | os.PathLike, config, action_stats: ActionNormStats | None,
                       depth_binning: DepthBinning) -> None:
    """Write policy.json and magma_policy.json for a checkpoint trained with `config` (a TrainConfig)."""
    directory = Path(directory)
    (directory / POLICY_FILE).write_text(json.dumps({"policy_class": POLICY_CLASS}, indent=2) + "\n")
    data = {
        "mode": config.mode,
        "trace_steps": config.trace_steps,
        "trace_stride": config.trace_stride,
        "depth_binning": depth_binning.to_dict(),
        "action_stats": action_stats.to_dict() if action_stats is not None else None,
        "marks": config.marks,
        "inference_marks": config.inference_marks,
        "trace_order": config.trace_order,
        "goal_header": config.goal_header,
    }
    (directory / POLICY_CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")


class MagmaPolicy:
    """Runs a Magma model per observation; see the module docstring."""

    def __init__(self, model, processor, mode: str = "trace", trace_steps: int = 4, trace_stride: int = 1,
                 depth_binning: DepthBinning = DepthBinning(), action_stats: ActionNormStats | None = None,
                 proposal: ProposalConfig = ProposalConfig(), max_marks: int = 2, marks: str = "ground_truth",
                 trace_order: str = "gripper_first", goal_header: bool = False, goal_memory: float = 0.8) -> None:
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(trace_steps, bool) or not isinstance(trace_steps, int) or trace_steps < 1:
            raise InvalidInputError(f"trace_steps must be a positive integer, got {trace_steps!r}")
        if mode == "action" and action_stats is None:
            raise InvalidInputError("action mode needs the training data's action statistics (q01/q99)")
        self.model = model.eval()
        self.processor = processor
        self.mode = mode
        self.trace_steps = trace_steps
        self.trace_stride = int(trace_stride)
        self.depth_binning = depth_binning
        self.proposal_config = proposal
        self.max_marks = int(max_marks)
        if marks not in ("proposed", "ground_truth"):
            raise InvalidInputError(f"marks must be 'proposed' or 'ground_truth', got {marks!r}")
        # How the checkpoint was taught to read marks: described run-time proposals or bare (id, cell) pairs.
        self.marks_format = marks
        if trace_order not in TRACE_ORDERS:
            raise InvalidInputError(f"trace_order must be one of {TRACE_ORDERS}, got {trace_order!r}")
        if trace_order == "target_first" and self.max_marks < 2:
            raise InvalidInputError("a target_first checkpoint writes its target's trace before the gripper's: max_marks must be >= 2")
        # target_first: the model names and traces the mark it heads for, then the gripper's path to it.
        self.trace_order = trace_order
        if goal_header and (trace_order != "target_first" or marks != "proposed"):
            raise InvalidInputError("goal_header needs trace_order target_first and marks proposed (as in training)")
        # The checkpoint opens its answers with the goal's listed description: rank those, then trace the best.
        self.goal_header = bool(goal_header)
        # One frame's ranking can be wrong; the goal traced is the one with the most belief over recent frames.
        self.goal_belief = GoalBelief(decay=goal_memory)
        # The gripper's last plan (grid steps), drafted for the next frame's decode: fewer model calls, same tokens.
        self._last_gripper_steps: list[tuple[int, ...]] | None = None
        self.action_tokenizer = ActionTokenizer(processor.vocab_size, action_stats) if action_stats is not None else None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, mode: str | None = None, device: str = "cpu") -> "MagmaPolicy":
        """Load a checkpoint folder (safetensors weights only; pickles are refused)."""
        from magma_core.model import MagmaForConditionalGeneration, MagmaProcessor
        from magma_core.model.safe_loading import CheckpointError, checkpoint_directory

        root = checkpoint_directory(path)
        config_path = root / POLICY_CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"{root} has no {POLICY_CONFIG_FILE}; it is not a checkpoint written by `magma train`")
        try:
            data = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {config_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{config_path} must hold a JSON object")
        # CPU inference runs in float32 whatever the weights were stored in (half-precision files halve the size).
        import torch

        dtype = torch.float32 if torch.device(device).type == "cpu" else None
        model = MagmaForConditionalGeneration.from_pretrained(root, dtype=dtype, device=device)
        processor = MagmaProcessor.from_pretrained(root)
        processor.check_model_config(model.config)
        stats = data.get("action_stats")
        try:
            return cls(
                model,
                processor,
                mode=mode or data.get("mode", "trace"),
                trace_steps=int(data.get("trace_steps", 4)),
                trace_stride=int(data.get("trace_stride", 1)),
                depth_binning=DepthBinning.from_dict(data.get("depth_binning", DepthBinning().to_dict())),
                action_stats=ActionNormStats.from_dict(stats) if stats is not None else None,
                max_marks=int(data.get("inference_marks", 2)),
                marks=str(data.get("marks", "ground_truth")),
                trace_order=str(data.get("trace_order", "gripper_first")),
                goal_header=bool(data.get("goal_header", False)),
                goal_memory=float(data.get("goal_memory", 0.8)),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{config_path} is malformed: {exc}") from exc

    def reset(self) -> None:
        """A new episode: forget the goal belief and the last plan (otherwise each call plans from its observation
        alone)."""
        self.goal_belief.reset()
        self._last_gripper_steps = None

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Trace mode: {marks, trace (gripper first, 2.5D pixels), trace_text, target_object, target_place,
        phase, gripper_mark, proposal}; action mode: {actions (1, 7), action_space}."""
        if not isinstance(obs, dict):
            raise InvalidInputError(f"observation must be a dict, got {type(obs).__name__}")
        if not isinstance(obs.get("instruction"), str):
            raise InvalidInputError("observation lacks an 'instruction' string")
        if "rgb" not in obs:
            raise InvalidInputError("observation lacks 'rgb'")
        if self.mode == "action":
            return self._infer_action(obs)
        return self._infer_trace(obs)

    def _infer_trace(self, obs: dict[str, Any]) -> dict[str, Any]:
        from magma_core.model import TraceGrammar, UnparsableOutputError
        from magma_core.model.generation import greedy_trace

        gripper_obs = obs.get("gripper")
        opening = None if gripper_obs is None else float(np.asarray(gripper_obs, dtype=np.float64).reshape(-1)[0])
        proposal = propose_marks(obs, self.proposal_config)
        width, height = proposal.image_size
        marks = prompt_marks(proposal.marks, width, height)
        if not marks:
            raise UnparsableOutputError("no marks were proposed in this observation; nothing to plan for")
        image = draw_marks(np.asarray(obs["rgb"]), proposal.marks)
        listed, positions, described = marks, None, None
        if self.marks_format == "proposed":
            described = describe_proposal(proposal, opening)
            listed = marks_text(described, width, height, self.depth_binning)
            positions = listed_positions(described, width, height, self.depth_binning)
        prompt = trace_prompt(obs["instruction"], listed, self.trace_steps, with_depth=True)
        batch = self.processor([image], [prompt])
        # Goal-first training anchors every trace at its mark's listed position: decoding pins the same start, so the
        # model decides which marks and where they go, and never re-copies a position from its prompt.
        goal_first = self.trace_order == "target_first"
        anchors = positions if goal_first and positions is not None else ()
        # Goal-first answers are one goal's trace and then the gripper's, as in training.
        trace_ids = self._trace_mark_ids(marks)
        goal_scores, prompt_cache = None, None
        # Greedy with jump-forward over the grammar's forced text: the same tokens as `generate`, fewer model calls.
        # Listed positions are drafted where a trace step begins (verified): same tokens, fewer model calls.
        # The steps' gripper flags are drafted from the hand's state now (closed or holding: 1), verified like the rest.
        hand = self.goal_belief.hand_state_of(opening)
        flag = None if hand == "unknown" else int(hand != "open")
        # The last plan's steps are drafted too: consecutive plans mostly agree (verified, so the tokens are the same).
        hints = {GRIPPER_MARK_ID: self._last_gripper_steps} if self._last_gripper_steps else None

        def decoding(ids: frozenset) -> dict:
            """How the answer tracing marks `ids` is decoded: grammar, budget, known prefix, drafts."""
            final = GRIPPER_MARK_ID if goal_first and GRIPPER_MARK_ID in ids and len(ids) > 1 else None
            grammar = TraceGrammar(expect_steps=self.trace_steps + 1, expect_25d=True,
                                   n_depth_bins=self.depth_binning.n_bins, mark_ids=ids,
                                   max_marks=min(self.max_marks, len(marks)), anchors=anchors, final_mark=final)
            return {"grammar": grammar, "max_new_tokens": self._answer_budget(grammar.max_marks),
                    "forced_prefix": self._gripper_prefix(proposal, marks, grammar), "mark_positions": positions,
                    "moving_mark": GRIPPER_MARK_ID, "gripper_flag": flag, "step_hints": hints}

        if self.goal_header and goal_first and described is not None and GRIPPER_MARK_ID in trace_ids:
            candidates = [m for m in described if m.mark_id != GRIPPER_MARK_ID and m.mark_id in trace_ids]
            if candidates:
                batch, goal, goal_scores, prompt_cache = self._choose_goal(batch, candidates, opening, decoding)
                trace_ids = frozenset({goal, GRIPPER_MARK_ID})
        plan = decoding(trace_ids)
        results, _ = greedy_trace(self.model, self.processor, batch, prompt_cache=prompt_cache, **plan)
        result = results[0]
        if not result.ok:
            self._last_gripper_steps = None
            raise UnparsableOutputError(f"the model's trace did not parse: {result.error}")
        self._last_gripper_steps = _grid_steps(result.traces, GRIPPER_MARK_ID)
        written = [t.mark_id for t in result.traces]
        if GRIPPER_MARK_ID in dict(marks) and GRIPPER_MARK_ID not in written:
            raise UnparsableOutputError(f"the model traced marks {written} but not the gripper (mark {GRIPPER_MARK_ID})")
        grid = sorted(result.traces, key=lambda t: (t.mark_id != GRIPPER_MARK_ID, t.mark_id))
        traces = traces_from_grid_traces(grid, width, height, self.depth_binning)
        # The mark the model wrote first (target_first) or the other traced mark is what it is going for.
        others = [m for m in written if m != GRIPPER_MARK_ID]
        return {
            "marks": proposal.marks,
            "trace": traces,
            "trace_text": encode_traces(grid, n_depth_bins=self.depth_binning.n_bins),
            "target_object": others[0] if others else None,
            "target_place": None,
            "phase": "model",
            "gripper_mark": GRIPPER_MARK_ID,
            "proposal": proposal,
            "goal_scores": goal_scores,
        }

    def _choose_goal(self, batch: dict, candidates, opening_m: float | None = None, decoding=None):
        """Rank the candidates' goal lines ("Goal: red block 4cm") by the model's likelihood after the prompt, fold
        the ranking into the goal belief (`GoalBelief`) and pick its best; returns the batch extended with that line
        and the trace start marker, its mark id, every score of this frame and the model state after the prompt
        (a `PromptCache`: the trace is decoded on from it, so the prompt runs once per step).

        `decoding(mark ids)` gives the trace decode's settings: the goal the belief already leads with is then
        traced ahead in the scoring call (`trace_lookahead`), which saves the decode a call when it stays the goal."""
        import torch

        from magma_core.model.fast_decode import trace_lookahead
        from magma_core.model.generation import goal_line_scores
        from magma_core.prompts import TRACE_START

        start_id = self.processor.tokenizer.convert_tokens_to_ids(TRACE_START)
        lookahead = None
        leading = self.goal_belief.leading([m.point for m in candidates], opening_m) if decoding is not None else None
        if leading is not None:
            settings = decoding(frozenset({int(candidates[leading].mark_id), GRIPPER_MARK_ID}))
            lookahead = (leading, [int(start_id)] + trace_lookahead(self.processor, **settings))
        # Room in the cache for the chosen line's own tokens (64 at most), the trace start and the longest answer.
        room = 64 + self._answer_budget(self.max_marks)
        scores, lines, cache = goal_line_scores(self.model, self.processor, batch, [m.text for m in candidates], room=room,
                                                lookahead=lookahead)
        best = self.goal_belief.update([m.point for m in candidates], scores, opening_m)
        extra = torch.tensor([lines[best] + [int(start_id)]], dtype=torch.long)
        ids = torch.as_tensor(batch["input_ids"])
        mask = torch.as_tensor(batch.get("attention_mask", torch.ones_like(ids)))
        extended = {**batch, "input_ids": torch.cat([ids, extra.to(ids.device)], dim=1),
                    "attention_mask": torch.cat([mask, torch.ones_like(extra).to(mask.device)], dim=1)}
        return (extended, int(candidates[best].mark_id), {int(m.mark_id): float(v) for m, v in zip(candidates, scores)},
                cache)

    def _gripper_prefix(self, proposal, marks, grammar) -> str:
        """Gripper-first answers start where proprioception puts the gripper (as in training): the model need not
        write that. "" otherwise."""
        from magma_core.model.fast_decode import trace_start_prefix

        gripper, gripper_cell = proposal.gripper, dict(marks).get(GRIPPER_MARK_ID)
        if (self.trace_order == "gripper_first" and gripper is not None and gripper_cell is not None
                and GRIPPER_MARK_ID in grammar.mark_ids and np.isfinite(gripper.depth) and gripper.depth > 0):
            return trace_start_prefix(GRIPPER_MARK_ID, gripper_cell, self.depth_binning.encode(gripper.depth))
        return ""

    def _answer_budget(self, n_marks: int) -> int:
        """Most tokens a trace answer of `n_marks` traces may take."""
        return 16 + n_marks * (8 + TOKENS_PER_STEP * (self.trace_steps + 1))

    def _trace_mark_ids(self, marks) -> frozenset[int]:
        ids = frozenset(m for m, _ in marks)
        # One trace at run time is the gripper's (the one the controller follows): let the grammar name only it.
        if self.max_marks == 1 and GRIPPER_MARK_ID in ids:
            return frozenset({GRIPPER_MARK_ID})
        return ids

    def _infer_action(self, obs: dict[str, Any]) -> dict[str, Any]:
        from magma_core.model.generation import generate_actions

        batch = self.processor([np.asarray(obs["rgb"])], [action_prompt(obs["instruction"])])
        actions = generate_actions(self.model, self.processor, batch, self.action_tokenizer, n_actions=1, do_sample=False)
        return {"actions": actions[0], "action_space": "ee_delta"}


def _grid_steps(traces, mark_id: int) -> list[tuple[int, ...]] | None:
    """One mark's trace as grid steps (x, y[, depth bin, gripper]), or None when it was not traced."""
    for trace in traces:
        if trace.mark_id == mark_id:
            columns = [trace.cells[:, 0], trace.cells[:, 1]]
            if trace.depth_bins is not None and trace.gripper is not None:
                columns += [trace.depth_bins, trace.gripper]
            return [tuple(int(v) for v in row) for row in zip(*columns)]
    return None


__all__ = ["MagmaPolicy", "write_policy_files", "POLICY_CLASS", "POLICY_FILE", "POLICY_CONFIG_FILE"]
