"""Batched greedy generation for chat prompts.

Prompts that share a long opening (a jailbreak template with many goals) are grouped, the rest sorted by length,
so that each batch pads little; each batch's common opening (at least the chat template's system text) is computed
once and its KV cache shared by every row (``share_prefix``); rows are left-padded so that every row ends at its
last prompt token, and decoded greedily; ``generate`` stops a batch as soon as every row has produced the end-of-turn
token. A batch holds up to ``batch_size`` prompts, fewer where their tokens would pass ``token_budget``.
"""

from __future__ import annotations

import functools
import inspect
import sys

import torch
from tqdm.auto import tqdm

from orthopatch.data.schema import Unformatted

# Prompts sharing this many tokens past the chat template's own opening count as one template's family.
TEMPLATE_TOKENS = 32
# A shorter common opening is not worth a pass of its own.
MIN_SHARED_PREFIX = 8


def forward_accepts(model, argument: str) -> bool:
    """Whether the (unwrapped) model's forward takes ``argument`` (e.g. ``logits_to_keep``: the head at chosen
    positions only)."""
    while hasattr(model, "module") and not hasattr(model, "get_base_model"):  # DDP and similar wrappers
        model = model.module
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in forward_parameters(type(inner))


@functools.cache
def forward_parameters(model_class: type) -> frozenset[str]:
    """The names a model class's forward takes (asked on every training step and generation batch)."""
    return frozenset(inspect.signature(model_class.forward).parameters)


def output_cache(output):
    """The KV cache a forward pass returned (``cache`` since transformers 5.24, ``past_key_values`` before)."""
    cache = output.get("cache")
    return cache if cache is not None else output.get("past_key_values")


def cache_argument(model) -> str:
    """The name ``generate`` takes a ready cache under (the old name warns on transformers >= 5.24)."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"


def chat_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    ids = []
    for prompt in prompts:
        if isinstance(prompt, Unformatted):
            ids.append(tokenizer(str(prompt))["input_ids"])
            continue
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


def unpadded(input_ids: torch.Tensor, attention: torch.Tensor) -> list[list[int]]:
    """Each row's tokens without its padding (either side): what :func:`left_pad` was given."""
    return [[t for t, m in zip(ids, mask, strict=True) if m]
            for ids, mask in zip(input_ids.tolist(), attention.bool().tolist(), strict=True)]


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest opening every row shares."""
    first, n = rows[0], min(len(r) for r in rows)
    for row in rows[1:]:
        n = next((i for i in range(n) if row[i] != first[i]), n)
    return n


def generation_order(ids: list[list[int]]) -> list[list[int]]:
    """Groups of prompt indices: each template family (prompts sharing TEMPLATE_TOKENS past the opening all chat
    prompts share) longest first, then every other prompt longest first."""
    if not ids:
        return []
    opening = common_prefix(ids)
    families: dict[tuple[int, ...], list[int]] = {}
    for index, row in enumerate(ids):
        key = tuple(row[opening:opening + TEMPLATE_TOKENS]) if len(row) > opening + TEMPLATE_TOKENS else ()
        families.setdefault(key, []).append(index)
    rest = [i for key, members in families.items() if len(members) == 1 or not key for i in members]
    groups = [members for key, members in families.items() if key and len(members) > 1] + [rest]
    return [sorted(group, key=lambda i: (-len(ids[i]), i)) for group in groups if group]


def batches(ids: list[list[int]], batch_size: int, token_budget: int | None, max_new_tokens: int
            ) -> list[list[int]]:
    """Batches of at most ``batch_size`` prompts, cut within each group; with ``token_budget``, also at most that
    many tokens (rows x (longest prompt + new tokens)); a prompt over the budget goes alone."""
    out = []
    for group in generation_order(ids):
        batch: list[int] = []
        for index in group:  # longest first: the batch's first prompt sets its width
            width = len(ids[batch[0]] if batch else ids[index]) + max_new_tokens
            if batch and (len(batch) == batch_size or (token_budget and (len(batch) + 1) * width > token_budget)):
                out.append(batch)
                batch = []
            batch.append(index)
        out.append(batch)
    return out


def memory_token_budget(config, free_bytes: int, dtype: torch.dtype, share: float = 0.5) -> int:
    """How many tokens of KV cache ``share`` of ``free_bytes`` holds for a model of ``config`` (keys and values of
    every layer, in ``dtype``); the rest is left for activations and the allocator."""
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * layers * heads * head_dim * torch.finfo(dtype).bits // 8
    return max(1, int(share * free_bytes) // per_token)


@torch.no_grad()
def prefix_cache(model, rows: list[list[int]], device):
    """The rows' common opening computed once (batch of one) and its cache repeated for every row; returns (length,
    cache), or (0, None) where the opening is too short to be worth it or the model's cache cannot be shared."""
    shared = min(common_prefix(rows), min(len(r) for r in rows) - 1)  # every row keeps a token to compute
    if shared < MIN_SHARED_PREFIX:
        return 0, None
    out = model(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True,
                **({"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}))
    cache = output_cache(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return 0, None
    cache.batch_repeat_interleave(len(rows))
    return shared, cache


def prefix_then_left_pad(rows: list[list[int]], shared: int, pad_id: int, device
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """[shared opening][padding][rest of the row]: the opening at the same positions in every row (its cache is
    shared), the rest left-padded so that every row ends at its last prompt token."""
    rest_ids, rest_attention = left_pad([r[shared:] for r in rows], pad_id, device)
    opening = torch.tensor([rows[0][:shared]] * len(rows), device=device)
    return torch.cat([opening, rest_ids], 1), torch.cat([torch.ones_like(opening), rest_attention], 1)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 16,
             token_budget: int | None = None, share_prefix: bool = False, progress: bool = False,
             desc: str = "generate") -> list[str]:
    """Greedy chat completions for ``prompts``, returned in input order. ``share_prefix``: compute each batch's
    common opening once (not for a model whose forward decides per prompt, such as a gated patch's)."""
    ids = chat_prompt_ids(tokenizer, prompts)
    out: list[str] = [""] * len(ids)
    cache_name = cache_argument(model)
    for chunk in tqdm(batches(ids, batch_size, token_budget, max_new_tokens), desc=desc, disable=not progress,
                      file=sys.stderr):
        rows = [ids[i] for i in chunk]
        shared, cache = prefix_cache(model, rows, model.device) if share_prefix else (0, None)
        if cache is None:
            input_ids, attention = left_pad(rows, tokenizer.pad_token_id, model.device)
        else:
            input_ids, attention = prefix_then_left_pad(rows, shared, tokenizer.pad_token_id, model.device)
        generated = model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, temperature=None, top_p=None,
            top_k=None, **({cache_name: cache} if cache is not None else {}))
        for row, index in enumerate(chunk):
            out[index] = tokenizer.decode(generated[row, input_ids.shape[1]:], skip_special_tokens=True).strip()
    return out
