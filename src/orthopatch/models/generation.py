"""Batched greedy generation for chat prompts.

Prompts are sorted by length so that each batch pads little, left-padded so that every row ends at its last prompt
token, and decoded greedily; ``generate`` stops a batch as soon as every row has produced the end-of-turn token.
"""

from __future__ import annotations

import inspect
import sys

import torch
from tqdm.auto import tqdm


def forward_accepts(model, argument: str) -> bool:
    """Whether the (unwrapped) model's forward takes ``argument`` (e.g. ``logits_to_keep``: the head at chosen
    positions only)."""
    while hasattr(model, "module") and not hasattr(model, "get_base_model"):  # DDP and similar wrappers
        model = model.module
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(inner.forward).parameters


def chat_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    ids = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention[i, width - len(row):] = 1
    return input_ids.to(device), attention.to(device)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 16,
             progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy chat completions for ``prompts``, returned in input order."""
    ids = chat_prompt_ids(tokenizer, prompts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    out: list[str] = [""] * len(ids)
    eos = tokenizer.eos_token_id
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, file=sys.stderr):
        chunk = order[start:start + batch_size]
        input_ids, attention = left_pad([ids[i] for i in chunk], tokenizer.pad_token_id, model.device)
        generated = model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, temperature=None, top_p=None, top_k=None,
        )
        for row, index in enumerate(chunk):
            out[index] = tokenizer.decode(generated[row, input_ids.shape[1]:], skip_special_tokens=True).strip()
    return out
