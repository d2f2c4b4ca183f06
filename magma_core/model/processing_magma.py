"""`MagmaProcessor`: images + prompts -> model inputs (and training labels); model outputs -> traces or actions.

Each ``<image>`` in a prompt is expanded into the positions its crop grid takes
(`num_image_tokens`), so the model only has to write features over placeholders. Training
examples mask the prompt in the labels (-100) and end the answer with end-of-sequence; a batch
is right-padded for training and left-padded for generation.

Prompt styles: "plain" (magma-tiny) is ``<s>`` + prompt + newline, the answer follows; "chat"
(Magma-8B's tokenizer) wraps the prompt in the tokenizer's chat template with Magma's system
prompt. Files: ``processor_config.json`` + the tokenizer's files; a copy of microsoft/Magma-8B
(``preprocessor_config.json`` + tokenizer) also loads.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from magma_core.codecs.action_tokenizer import ACTION_DIM, DEFAULT_N_BINS, ActionTokenizer
from magma_core.codecs.trace_text import ParseResult, parse_traces
from magma_core.errors import InvalidInputError
from magma_core.model.image_processing_magma import MagmaImageProcessor
from magma_core.prompts import IMAGE_TOKEN

PROCESSOR_CONFIG = "processor_config.json"
OFFICIAL_PREPROCESSOR_CONFIG = "preprocessor_config.json"
MAGMA_SYSTEM_PROMPT = "You are agent that can see, talk and act."  # Magma-8B's own wording
PROMPT_STYLES = ("plain", "chat")
FORMAT_VERSION = 1


class UnparsableOutputError(InvalidInputError):
    """Model output that does not decode to what was asked (the robot must hold still)."""


@dataclass
class Example:
    """One tokenised example: ids (images expanded), labels (-100 on the prompt), crops and their grids."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: np.ndarray  # (n_crops, 3, S, S) float32
    image_grids: list[tuple[int, int]] = field(default_factory=list)


class MagmaProcessor:
    """Tokenizer + image processor + the layout of image positions (features per crop side, separators)."""

    def __init__(
        self,
        tokenizer,
        image_processor: MagmaImageProcessor,
        features_per_side: int,
        use_row_separator: bool = True,
        prompt_style: str = "plain",
        system_prompt: str = MAGMA_SYSTEM_PROMPT,
        max_length: int | None = None,
    ):
        if prompt_style not in PROMPT_STYLES:
            raise InvalidInputError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        if not isinstance(features_per_side, (int, np.integer)) or features_per_side < 1:
            raise InvalidInputError(f"features_per_side must be a positive int, got {features_per_side!r}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.features_per_side = int(features_per_side)
        self.use_row_separator = bool(use_row_separator)
        self.prompt_style = prompt_style
        self.system_prompt = system_prompt
        limit = getattr(tokenizer, "model_max_length", None)
        self.max_length = int(max_length) if max_length else (int(limit) if limit and limit < 1_000_000 else None)
        self.image_token_id = self._required_id(IMAGE_TOKEN)
        for name in ("pad_token_id", "eos_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise InvalidInputError(f"the tokenizer has no {name.replace('_id', '')}; set one before building the processor")
        self._trace_vocabulary = None
        self.action_convention = None  # None: magma-tiny's layout; for_config sets another model's

    @classmethod
    def for_config(cls, tokenizer, config, **kwargs) -> "MagmaProcessor":
        """A processor whose image layout matches `config` (a MagmaConfig)."""
        image_processor = MagmaImageProcessor(image_size=config.image_size, max_num_crops=config.max_num_crops)
        kwargs.setdefault("max_length", config.text_config.max_position_embeddings)
        processor = cls(tokenizer, image_processor, config.features_per_side, config.use_row_separator, **kwargs)
        from magma_core.codecs.action_conventions import convention_for_config

        convention = convention_for_config(config, tokenizer)
        # magma-tiny's layout is the processor's own; only another layout (Magma-8B's) is kept.
        processor.action_convention = None if convention.name == "magma-tiny" else convention
        return processor

    # ------------------------------------------------------------------ ids

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def action_id_range(self) -> tuple[int, int]:
        """[first, end) of the action tokens: the last 256 ids of the vocabulary (magma-tiny), or the model's own
        layout (`action_convention`, e.g. Magma-8B's reversed ids ending at Llama-3's base vocabulary)."""
        convention = getattr(self, "action_convention", None)
        if convention is not None:
            return tuple(int(v) for v in convention.id_range)
        return self.vocab_size - DEFAULT_N_BINS, self.vocab_size

    @property
    def trace_vocabulary(self):
        """Token texts and trie for trace-constrained decoding (built on first use, then reused)."""
        if self._trace_vocabulary is None:
            from magma_core.model.constrained import TraceVocabulary

            self._trace_vocabulary = TraceVocabulary(self.tokenizer, self.eos_token_id)
        return self._trace_vocabulary

    def check_model_config(self, config) -> None:
        """Raise if this processor's token layout or image layout disagrees with a MagmaConfig."""
        problems = []
        if config.text_config.vocab_size != self.vocab_size:
            problems.append(f"vocabulary {self.vocab_size} vs model {config.text_config.vocab_size}")
        if config.image_token_id != self.image_token_id:
            problems.append(f"image token id {self.image_token_id} vs model {config.image_token_id}")
        if config.features_per_side != self.features_per_side or config.use_row_separator != self.use_row_separator:
            problems.append("image feature layout differs")
        if config.image_size != self.image_processor.image_size:
            problems.append(f"crop size {self.image_processor.image_size} vs model {config.image_size}")
        if problems:
            raise InvalidInputError("processor and model do not match: " + "; ".join(problems))

    # ------------------------------------------------------------------ encoding

    def num_image_tokens(self, grid: tuple[int, int]) -> int:
        rows, cols = grid
        side = self.features_per_side
        return rows * side * (cols * side + (1 if self.use_row_separator else 0))

    def format_prompt(self, prompt: str) -> str:
        """The prompt as the model reads it, up to where its answer starts."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("prompt must be a non-empty str")
        if self.prompt_style == "plain":
            return prompt + "\n"
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, prompt: str, images) -> tuple[list[int], np.ndarray, list[tuple[int, int]]]:
        """Prompt ids with every <image> expanded, the crops of `images` (in order) and their grids."""
        images = _as_image_list(images)
        ids = self.tokenizer.encode(self.format_prompt(prompt), add_special_tokens=False)
        if self.prompt_style == "plain":
            ids = [int(self.tokenizer.bos_token_id)] + ids if self.tokenizer.bos_token_id is not None else ids
        n_slots = sum(1 for i in ids if i == self.image_token_id)
        if n_slots != len(images):
            raise InvalidInputError(f"the prompt has {n_slots} {IMAGE_TOKEN} placeholder(s) but {len(images)} image(s) were given")
        crops, grids = [], []
        for image in images:
            pixels, grid = self.image_processor.preprocess(image)
            crops.append(pixels)
            grids.append(grid)
        expanded, image_index = [], 0
        for token in ids:
            if token == self.image_token_id:
                expanded.extend([self.image_token_id] * self.num_image_tokens(grids[image_index]))
                image_index += 1
            else:
                expanded.append(int(token))
        size = self.image_processor.image_size
        pixel_values = np.concatenate(crops) if crops else np.zeros((0, 3, size, size), np.float32)
        return expanded, pixel_values, grids

    def encode_answer(self, answer: str) -> list[int]:
        """Answer text -> ids ending with end-of-sequence (special tokens such as <trace_start> stay atomic)."""
        if not isinstance(answer, str) or not answer:
            raise InvalidInputError("answer must be a non-empty str")
        ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if self.image_token_id in ids:
            raise InvalidInputError(f"an answer must not contain {IMAGE_TOKEN}")
        return [int(i) for i in ids] + [self.eos_token_id]

    def build_example(self, images, prompt: str, answer: str | None = None, answer_ids: Sequence[int] | None = None) -> Example:
        """A training example: the loss covers the answer (text or ids, e.g. action tokens) and end-of-sequence."""
        if (answer is None) == (answer_ids is None):
            raise InvalidInputError("give exactly one of answer (text) or answer_ids")
        prompt_ids, pixel_values, grids = self.encode_prompt(prompt, images)
        if answer is not None:
            target = self.encode_answer(answer)
        else:
            target = [int(i) for i in np.asarray(answer_ids).reshape(-1)]
            bad = [i for i in target if not 0 <= i < self.vocab_size or i == self.image_token_id]
            if not target or bad:
                raise InvalidInputError(f"answer_ids must be non-empty ids in [0, {self.vocab_size}) without the image token; bad: {bad[:5]}")
            target.append(self.eos_token_id)
        input_ids = prompt_ids + target
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise InvalidInputError(f"example has {len(input_ids)} tokens, more than the model's {self.max_length}; shorten the prompt or answer")
        return Example(input_ids, [-100] * len(prompt_ids) + target, pixel_values, grids)

    def collate(self, examples: Sequence[Example], padding_side: str = "right") -> dict:
        """Pad a list of examples into tensors: input_ids, attention_mask, labels, pixel_values, image_grids."""
        import torch

        if not examples:
            raise InvalidInputError("no examples to collate")
        if padding_side not in ("left", "right"):
            raise InvalidInputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        width = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            span = slice(width - n, width) if padding_side == "left" else slice(0, n)
            ids[row, span] = torch.tensor(example.input_ids, dtype=torch.long)
            mask[row, span] = 1
            labels[row, span] = torch.tensor(example.labels, dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        crops = [e.pixel_values for e in examples if len(e.pixel_values)]
        if crops:
            batch["pixel_values"] = torch.from_numpy(np.concatenate(crops))
            batch["image_grids"] = torch.tensor([g for e in examples for g in e.image_grids], dtype=torch.long)
        return batch

    def __call__(self, images, prompts: str | Sequence[str], padding_side: str = "left") -> dict:
        """Inference batch (no labels), left-padded for `generate()`; one image (or list) per prompt."""
        if isinstance(prompts, str):
            prompts, images = [prompts], [images]
        if len(images) != len(prompts):
            raise InvalidInputError(f"{len(prompts)} prompts but {len(images)} image entries")
        examples = []
        for prompt, image in zip(prompts, images):
            ids, pixels, grids = self.encode_prompt(prompt, image)
            if self.max_length is not None and len(ids) > self.max_length:
                raise InvalidInputError(f"prompt has {len(ids)} tokens, more than the model's {self.max_length}")
            examples.append(Example(ids, [-100] * len(ids), pixels, grids))
        batch = self.collate(examples, padding_side=padding_side)
        del batch["labels"]
        return batch

    # ------------------------------------------------------------------ decoding

    def answer_ids(self, ids) -> list[int]:
        """Generated ids up to (not including) the first end-of-sequence; padding dropped."""
        out = []
        for token in np.asarray(_to_numpy(ids)).reshape(-1).tolist():
            if token == self.eos_token_id:
                break
            if token != self.pad_token_id:
                out.append(int(token))
        return out

    def decode_text(self, ids) -> str:
        return self.tokenizer.decode(self.answer_ids(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode_trace(self, ids, **parse_options) -> ParseResult:
        """Generated ids -> `ParseResult` (never raises on model output); options as `parse_traces`."""
        return parse_traces(self.decode_text(ids), **parse_options)

    def decode_actions(self, ids, action_tokenizer: ActionTokenizer, n_actions: int | None = None) -> np.ndarray:
        """Generated ids -> actions (K, 7) in dataset units; raises UnparsableOutputError on anything else."""
        if not isinstance(action_tokenizer, ActionTokenizer):
            raise InvalidInputError(f"action_tokenizer must be an ActionTokenizer, got {type(action_tokenizer).__name__}")
        if tuple(action_tokenizer.action_id_range) != tuple(self.action_id_range):
            raise InvalidInputError(
                f"the ActionTokenizer writes action ids {action_tokenizer.action_id_range} but this model's are {self.action_id_range}"
            )
        tokens = np.asarray(self.answer_ids(ids), dtype=np.int64)
        want = None if n_actions is None else ACTION_DIM * int(n_actions)
        if tokens.size == 0 or tokens.size % ACTION_DIM or (want is not None and tokens.size != want):
            expected = f"{want}" if want is not None else f"a multiple of {ACTION_DIM}"
            raise UnparsableOutputError(f"the model wrote {tokens.size} token(s) before end-of-sequence; expected {expected} action tokens")
        outside = ~np.asarray(action_tokenizer.is_action_token(tokens), dtype=bool)
        if outside.any():
            raise UnparsableOutputError(f"{int(outside.sum())} of the {tokens.size} tokens are not action tokens")
        return action_tokenizer.decode(tokens.reshape(-1, ACTION_DIM))

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        return {
            "processor_class": "MagmaProcessor",
            "format_version": FORMAT_VERSION,
            "image_processor": self.image_processor.to_dict(),
            "features_per_side": self.features_per_side,
            "use_row_separator": self.use_row_separator,
            "prompt_style": self.prompt_style,
            "system_prompt": self.system_prompt,
            "max_length": self.max_length,
        }

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write processor_config.json and the tokenizer (tokenizer.json, tokenizer_config.json)."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "MagmaProcessor":
        """Load this project's processor directory, or the processor files of a local Magma-8B copy."""
        from transformers import PreTrainedTokenizerFast

        directory = Path(path)
        if not directory.is_dir():
            raise InvalidInputError(f"processor directory not found: {directory}")
        if not (directory / "tokenizer.json").is_file():
            raise InvalidInputError(f"{directory} has no tokenizer.json; a processor needs the tokenizer's files")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
        if (directory / PROCESSOR_CONFIG).is_file():
            data = _read_json(directory / PROCESSOR_CONFIG)
            if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
                raise InvalidInputError(f"{directory / PROCESSOR_CONFIG} has format version {data['format_version']}, newer than this code")
            return cls(
                tokenizer,
                MagmaImageProcessor.from_dict(data.get("image_processor", {})),
                data["features_per_side"],
                data.get("use_row_separator", True),
                data.get("prompt_style", "plain"),
                data.get("system_prompt", MAGMA_SYSTEM_PROMPT),
                data.get("max_length"),
            )
        if (directory / OFFICIAL_PREPROCESSOR_CONFIG).is_file():
            return cls._from_official(tokenizer, _read_json(directory / OFFICIAL_PREPROCESSOR_CONFIG))
        raise InvalidInputError(f"{directory} has neither {PROCESSOR_CONFIG} nor {OFFICIAL_PREPROCESSOR_CONFIG}")

    @classmethod
    def _from_official(cls, tokenizer, data: dict) -> "MagmaProcessor":
        if data.get("anyres_strategy", "crop") != "crop":
            raise InvalidInputError(f"anyres_strategy {data.get('anyres_strategy')!r} is not supported; only 'crop'")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = "<pad>"
        size = int(data.get("base_img_size", 512))
        image_processor = MagmaImageProcessor(
            image_size=size,
            max_num_crops=int(data.get("num_crops", 4)),
            image_mean=data.get("image_mean", MagmaImageProcessor().image_mean),
            image_std=data.get("image_std", MagmaImageProcessor().image_std),
        )
        # ConvNeXt's stride is 32: a 512 px crop gives 16x16 features.
        return cls(tokenizer, image_processor, size // 32, True, "chat", MAGMA_SYSTEM_PROMPT)

    def _required_id(self, token: str) -> int:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise InvalidInputError(f"the tokenizer splits {token} into {len(ids)} tokens; it must be a single special token")
        return int(ids[0])


def _as_image_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _to_numpy(ids):
    if hasattr(ids, "detach"):
        return ids.detach().cpu().numpy()
    return ids


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must hold a JSON object")
    return data


__all__ = ["MagmaProcessor", "Example", "UnparsableOutputError", "MAGMA_SYSTEM_PROMPT", "PROMPT_STYLES"]
