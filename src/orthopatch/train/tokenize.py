"""Chat examples to token ids with a loss mask on assistant tokens only.

The conversation is rendered with the model's own chat template (transformers renders it in Jinja2's sandbox). The
character span of each assistant turn is found by rendering the conversation prefix by prefix, and tokens are
labelled by their character offsets. This works for any template that renders prefixes consistently, needs no
``{% generation %}`` tags (most stock templates lack them, FIELD.md b2), and every example is checked to keep a
non-empty label mask (TRL #4201: an all-masked example trains on nothing, silently).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orthopatch.errors import UserError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedExample:
    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (with their end-of-turn token)."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise UserError("the model's chat template does not render conversations prefix-consistently, so the "
                            "assistant tokens cannot be located for loss masking")
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_chat(tokenizer, messages: list[dict[str, str]], max_length: int, example_id: str,
                  context_length: int | None = None, source: tuple[str, int] | None = None) -> TokenizedExample:
    """Token ids and labels of one conversation; ``source`` (file, line) is named in errors."""
    where = {"path": source[0], "line": source[1]} if source else {}
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    prompt_tokens = sum(1 for s, _ in encoded["offset_mapping"] if s < spans[0][0]) if spans else len(ids)
    if context_length is not None and prompt_tokens >= context_length:
        raise UserError(f"example {example_id!r}: the prompt is {prompt_tokens} tokens, longer than the model's "
                        f"context ({context_length})", field="prompt", **where)
    labels = [IGNORE_INDEX] * len(ids)
    for index, (start, end) in enumerate(encoded["offset_mapping"]):
        if any(s <= start < e for s, e in spans) and end > start:
            labels[index] = ids[index]
    ids, labels = ids[:max_length], labels[:max_length]
    example = TokenizedExample(id=example_id, input_ids=ids, labels=labels)
    if example.n_label_tokens == 0:
        raise UserError(f"example {example_id!r} has no assistant tokens left to train on after masking "
                        f"(max_length={max_length} cuts them all, or the response is empty)", field="max_length",
                        **where)
    return example


def pad_batch(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a training batch; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
